//! The data and the trainer a run, an evaluation or a measurement works on, built one way
//! for all of them ([`data_and_trainer`]).

use serde::Serialize;

use super::error::RunError;
use super::job::PlannedConfig;
use crate::config::Config;
use crate::data::Dataset;
use crate::training::Trainer;

/// The host memory the data takes, as `train plan` and the start-up log state it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DataMemory {
    /// Whether examples are read from their files as batches need them.
    pub streamed: bool,
    /// Threads reading each batch (`data.workers`).
    pub workers: usize,
    /// Batches queued ahead (`data.prefetch_batches`).
    pub prefetch_batches: usize,
    /// Host bytes of one example.
    pub example_bytes: u64,
    /// The most host memory the data takes: streamed, the batches in flight (those queued,
    /// the one being assembled, the one the step holds; evaluation reads batches of at
    /// least 256); held, the whole data set.
    pub host_bytes: u64,
}

/// Opens the configured data set with its pipeline's settings (`data.workers`,
/// `data.on_bad_sample`) and says what it takes in host memory.
pub fn load_data(cfg: &Config) -> Result<(Dataset, DataMemory), RunError> {
    let gpt = &cfg.model.gpt;
    let data = Dataset::load(&cfg.data, gpt.context as usize, gpt.vocab, &cfg.model.torchscript.inputs)?;
    let workers = decode_workers(cfg.data.workers, cfg.run.threads);
    let skip = cfg.data.on_bad_sample == crate::data::config::OnBadSample::Skip;
    let data = Dataset {
        train: data.train.with_workers(workers).skipping_bad_samples(skip),
        val: data.val.with_workers(workers).skipping_bad_samples(skip),
        ..data
    };
    let example_bytes = data.train.example_bytes() as u64;
    let streamed = data.train.is_streamed();
    let host_bytes = if streamed {
        let batch = cfg.training.batch_size.max(256) as u64;
        (cfg.data.prefetch_batches as u64 + 2) * batch * example_bytes
    } else {
        (data.train.len() + data.val.len()) as u64 * example_bytes
    };
    let memory =
        DataMemory { streamed, workers, prefetch_batches: cfg.data.prefetch_batches, example_bytes, host_bytes };
    Ok((data, memory))
}

/// Loads the configured data set, has `check` look at it (a run's refusals that need the
/// data's size or task, before the model costs anything), then builds the model and its
/// trainer on `device`, with `memory.vram_limit` capping the device from the first
/// allocation. Building the model is where a GPU too small for it (or a `vram_limit` below
/// it) first shows: libtorch's out-of-memory panic comes back as
/// [`RunError::OutOfMemory`].
pub fn data_and_trainer(
    cfg: &PlannedConfig,
    device: tch::Device,
    check: impl FnOnce(&Dataset) -> Result<(), RunError>,
) -> Result<(Dataset, Trainer), RunError> {
    let (data, memory) = load_data(cfg)?;
    tracing::info!(
        train = data.train.len(),
        val = data.val.len(),
        task = ?data.task,
        from = %crate::data::source_of(&cfg.data).display(),
        "data loaded"
    );
    if memory.streamed {
        tracing::info!(
            workers = memory.workers,
            prefetch_batches = memory.prefetch_batches,
            host_bound = %bytesize::ByteSize(memory.host_bytes),
            "data streamed from its files: host memory for data is at most the batches in flight, whatever the \
             data set's size"
        );
    } else {
        tracing::info!(host_bytes = %bytesize::ByteSize(memory.host_bytes), "data held in host memory");
    }
    check(&data)?;
    if let (Some(limit), tch::Device::Cuda(i)) = (cfg.memory.vram_limit, device) {
        crate::memory::cuda::limit_vram(limit.as_u64(), i);
    }
    let trainer = crate::fault::catch_oom(|| Trainer::new(cfg, &data, device))
        .map_err(|msg| RunError::OutOfMemory { detail: format!("building the model: {msg}") })??;
    Ok((data, trainer))
}

/// `data.workers`, or else the cores that `run.threads` leaves to the data (at least one).
fn decode_workers(configured: Option<usize>, threads: Option<u32>) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    configured.unwrap_or_else(|| cores.saturating_sub(threads.map_or(cores, |t| t as usize)).max(1))
}

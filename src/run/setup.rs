//! The data and the trainer a run, an evaluation or a measurement works on, built one way
//! for all of them ([`data_and_trainer`]).

use super::error::RunError;
use super::job::PlannedConfig;
use crate::data::Dataset;
use crate::training::Trainer;

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
    let data = Dataset::load(&cfg.data, cfg.model.gpt.context as usize, &cfg.model.torchscript.inputs)?;
    tracing::info!(
        train = data.train.len(),
        val = data.val.len(),
        task = ?data.task,
        from = %crate::data::source_of(&cfg.data).display(),
        "data loaded"
    );
    check(&data)?;
    if let (Some(limit), tch::Device::Cuda(i)) = (cfg.memory.vram_limit, device) {
        crate::memory::cuda::limit_vram(limit.as_u64(), i);
    }
    let trainer = crate::fault::catch_oom(|| Trainer::new(cfg, &data, device))
        .map_err(|msg| RunError::OutOfMemory { detail: format!("building the model: {msg}") })??;
    Ok((data, trainer))
}

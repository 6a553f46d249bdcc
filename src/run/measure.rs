//! What `train plan` needs from a run without running it: the sizes of the configured
//! model and its optimiser state, and a real load measured (`--execute`).

use std::time::Instant;

use super::error::RunError;
use super::job::UserConfig;
use super::resume;
use super::setup::data_and_trainer;
use crate::checkpoint::tensors::tensor_bytes;
use crate::checkpoint::{CheckpointFile, Strategy};
use crate::memory;
use train_ckpt::strategy::Sizes;

/// The sizes a plan needs when there is no checkpoint yet: the configured model built on the
/// CPU, and the state its optimiser will hold. Loads the data set for the model's input shape.
pub fn model_sizes(cfg: &UserConfig) -> Result<Sizes, RunError> {
    let (_, trainer) = data_and_trainer(&cfg.plan(1), tch::Device::Cpu, |_| Ok(()))?;
    let vars = trainer.variables();
    let model: u64 = vars.values().map(tensor_bytes).sum();
    let largest = vars.values().map(tensor_bytes).max().unwrap_or(0);
    let optimizer = crate::optim::state_bytes(&cfg.training.optimizer, model, vars.len() as u64);
    Ok(Sizes { model, weights: model, optimizer, largest })
}

/// What loading a checkpoint actually took, measured (`train plan --execute`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MeasuredLoad {
    /// The strategy that succeeded (after any step down).
    pub strategy: Strategy,
    /// Wall time of the load.
    pub seconds: f64,
    /// Peak host RSS during the load above the RSS just before it (model included before).
    pub host_peak_above_start_bytes: Option<u64>,
    /// Peak bytes allocated on the CUDA device during the load (`None` on the CPU).
    pub device_peak_allocated_bytes: Option<u64>,
    /// Bytes allocated on the CUDA device before the load (the model).
    pub device_allocated_before_bytes: Option<u64>,
}

/// Builds the configured model on the configured device and loads `file` into it as a run
/// would (plan, strategy, step-down), measuring time and peak memory. Writes nothing.
pub fn measure_load(cfg: &UserConfig, file: &CheckpointFile) -> Result<MeasuredLoad, RunError> {
    let device = crate::device::select(cfg.run.device).map_err(|e| RunError::Device(e.to_string()))?;
    let planned = cfg.plan(1);
    // As a run does: memory.vram_limit applies from the first allocation.
    let (data, mut trainer) = data_and_trainer(&planned, device, |_| Ok(()))?;
    drop(data);
    let cuda = match device {
        tch::Device::Cuda(i) => Some(i),
        _ => None,
    };
    let before = cuda.and_then(memory::cuda::stats).map(|s| s.allocated);
    if let Some(i) = cuda {
        memory::cuda::reset_peak(i);
    }
    memory::probe::reset_peak_rss();
    let rss_before = memory::probe::host().rss;
    let start = Instant::now();
    let strategy = resume::load_planned(&planned, &mut trainer, file)?;
    let seconds = start.elapsed().as_secs_f64();
    let host = memory::probe::host();
    Ok(MeasuredLoad {
        strategy,
        seconds,
        host_peak_above_start_bytes: host.peak_rss.zip(rss_before).map(|(p, b)| p.saturating_sub(b)),
        device_peak_allocated_bytes: cuda.and_then(memory::cuda::stats).map(|s| s.peak_allocated),
        device_allocated_before_bytes: before,
    })
}

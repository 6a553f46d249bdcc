//! The seed guide's Python helpers as library functions, over the checkpoint layer and an
//! optimiser: [`load_checkpoint_memory_efficient`] and [`load_model_only`]; and
//! [`install_optimizer_state`], which hands the optimiser state a load read to an optimiser.

use std::path::Path;

use tch::Device;

use crate::checkpoint::load::{load_into, LoadOutcome, OptimizerState};
use crate::checkpoint::plan::load::{restore_optimizer, OptimizerRestore};
use crate::checkpoint::{CheckpointError, CheckpointFile, Strategy};
use crate::optim::Optimizer;

/// Gives `optimizer` the state a load read from `path` (its tensors by slot key); the
/// optimiser's refusal names the tensor.
pub fn install_optimizer_state(
    optimizer: &mut (dyn Optimizer + 'static),
    path: &Path,
    state: OptimizerState,
) -> Result<(), CheckpointError> {
    optimizer.load_state(state).map_err(|e| CheckpointError::Optimizer { path: path.to_path_buf(), source: e.into() })
}

/// What the seed guide's `load_checkpoint_memory_efficient` returns: epoch, train loss and
/// validation loss of the checkpoint.
pub type EpochLosses = (u32, f64, f64);

/// Loads `path` into the model held by `vs` and into `optimizer`, streaming one tensor at a
/// time through host memory onto `device` (the seed guide's `load_checkpoint_memory_efficient`).
/// Strict about names; shape or dtype mismatches name the tensor.
pub fn load_checkpoint_memory_efficient(
    vs: &tch::nn::VarStore,
    optimizer: &mut (dyn Optimizer + 'static),
    path: &Path,
    device: Device,
) -> Result<EpochLosses, CheckpointError> {
    let file = CheckpointFile::open(path)?;
    let m = file.meta_or_imported();
    let restore = restore_optimizer(Strategy::MemoryEfficient, &m, optimizer.config().kind.name());
    if let OptimizerRestore::Fresh(why) = &restore {
        tracing::info!("the optimizer starts fresh: {why}");
        optimizer.reset_state();
    }
    let with_optimizer = restore == OptimizerRestore::Restore;
    let (_, state) = load_into(&file, &vs.variables(), device, Strategy::MemoryEfficient, true, with_optimizer)?;
    if with_optimizer {
        install_optimizer_state(optimizer, path, state)?;
    }
    Ok((m.epoch(), m.train_loss, m.val_loss))
}

/// Loads only the weights of `path` into the model held by `vs` (the seed guide's
/// `load_model_only`). With `strict = false`, names the model lacks or the file lacks are
/// reported in the outcome instead of failing. Returns epoch, train loss and the outcome.
pub fn load_model_only(
    vs: &tch::nn::VarStore,
    path: &Path,
    strict: bool,
) -> Result<(u32, f64, LoadOutcome), CheckpointError> {
    let file = CheckpointFile::open(path)?;
    let (outcome, _) = load_into(&file, &vs.variables(), vs.device(), Strategy::ModelOnly, strict, false)?;
    let m = file.meta_or_imported();
    Ok((m.epoch(), m.train_loss, outcome))
}

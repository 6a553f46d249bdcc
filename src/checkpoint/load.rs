//! Loading a checkpoint into a model's variables and an optimiser, by strategy (see
//! [`crate::memory::strategy`] for the predicted peaks):
//! - [`Strategy::Standard`] stages every tensor on the target device first, then assigns:
//!   peak = model + the whole checkpoint.
//! - [`Strategy::MemoryEfficient`] streams: each tensor is read from the file into one
//!   host tensor of its size, checked, copied into its parameter, and dropped before the
//!   next; the host never holds two checkpoint tensors at once.
//! - [`Strategy::ModelOnly`] streams the weights and leaves the optimiser fresh.
//!
//! Also the library API of the seed guide's helpers: [`load_checkpoint_memory_efficient`]
//! and [`load_model_only`].

use std::collections::HashMap;
use std::path::Path;
use train_store::Error as FileError;

use tch::{Device, Kind, Tensor};

use super::source::{CheckpointFile, Entry};
use super::{CheckpointError, Meta, OPTIMIZER_PREFIX};
use crate::dtype::to_kind;
pub use crate::memory::strategy::Strategy;
use crate::optim::config::OptimizerKind;
use crate::optim::Optimizer;

/// What a load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOutcome {
    /// Model tensors restored.
    pub weights: usize,
    /// Optimiser state tensors restored (0 when not loaded or absent).
    pub optimizer_tensors: usize,
    /// Whether the optimiser's state came from the checkpoint.
    pub optimizer_restored: bool,
    /// Model variables the checkpoint lacks (non-strict loads only).
    pub missing: Vec<String>,
    /// Checkpoint weights the model lacks (non-strict loads only).
    pub unexpected: Vec<String>,
}

/// Loads `file` into `vars` (the model's named variables, on `device`) and, when given an
/// `optimizer`, replaces its state with the file's (see [`restore_optimizer`] for when to).
/// `strict`: every variable must be present and no other weights may be; otherwise the
/// differences are reported in the outcome. Shapes and dtypes must match either way; every
/// tensor is checked against its checksum as it is read. A load that fails partway (a
/// damaged file, out of memory) leaves the model partly overwritten: reload or stop.
pub fn load_into(
    file: &CheckpointFile,
    vars: &HashMap<String, Tensor>,
    optimizer: Option<&mut (dyn Optimizer + 'static)>,
    device: Device,
    strategy: Strategy,
    strict: bool,
) -> Result<LoadOutcome, CheckpointError> {
    let path = file.path().to_path_buf();
    crate::fault::check_load(strategy.name())
        .map_err(|source| CheckpointError::Torch { path: path.clone(), source })?;
    let weights: Vec<&Entry> = file.entries().iter().filter(|e| !e.name.starts_with(OPTIMIZER_PREFIX)).collect();
    // A state dict saved from a DistributedDataParallel or torch.compile wrapper: every name
    // carries its prefix, which the model's names do not. Matched in the file's names.
    let prefixed: HashMap<String, Tensor>;
    let vars = match super::init::wrapper_prefix(&weights, vars) {
        Some(prefix) => {
            tracing::info!(path = %path.display(), "the file's names carry the wrapper prefix `{prefix}`: matched without it");
            prefixed = vars.iter().map(|(n, t)| (format!("{prefix}{n}"), t.shallow_clone())).collect();
            &prefixed
        }
        None => vars,
    };
    // A weights file (not a train checkpoint) that does not match: fine-tuning is the
    // non-strict load.
    let hint = if file.meta().is_none() {
        "; it is a weights file, not a train checkpoint: to start from the weights that match, use --init-from \
         instead of --resume (it loads what matches and reports the rest)"
    } else {
        ""
    };
    let mut outcome = LoadOutcome {
        weights: 0,
        optimizer_tensors: 0,
        optimizer_restored: false,
        missing: vars.keys().filter(|n| file.entry(n).is_none()).cloned().collect(),
        unexpected: weights.iter().filter(|e| !vars.contains_key(&e.name)).map(|e| e.name.clone()).collect(),
    };
    outcome.missing.sort();
    outcome.unexpected.sort();
    if strict {
        if let Some(tensor) = outcome.unexpected.first() {
            return Err(CheckpointError::UnexpectedTensor { path, tensor: tensor.clone(), hint });
        }
        if let Some(tensor) = outcome.missing.first() {
            return Err(CheckpointError::MissingTensor { path, tensor: tensor.clone(), hint });
        }
    }
    let present: Vec<(&Entry, &Tensor)> = weights.iter().filter_map(|e| vars.get(&e.name).map(|v| (*e, v))).collect();
    // Validate every weight before touching any, so a mismatch leaves the model as it was.
    for (e, var) in &present {
        check(&path, e, var)?;
    }
    let _guard = tch::no_grad_guard();
    let torch = |source| CheckpointError::Torch { path: path.clone(), source };
    let opt_entries: Vec<&Entry> = if optimizer.is_some() {
        file.entries().iter().filter(|e| e.name.starts_with(OPTIMIZER_PREFIX)).collect()
    } else {
        Vec::new()
    };
    // On the CPU the optimizer's host tensors are its state: made now, they are read in the
    // same parallel read as the weights (a compressed file then decodes the whole checkpoint
    // in one pass, reading ahead all the way). Elsewhere they are read after the weights,
    // one at a time on their way to the device.
    let mut opt_host =
        if optimizer.is_some() && device == Device::Cpu { Some(empty_tensors(file, &opt_entries)?) } else { None };
    match strategy {
        Strategy::MemoryEfficient | Strategy::ModelOnly => {
            // Host parameters are read into in place: no staging copy at all, and a
            // compressed file decodes them in parallel, across tensors as well as within
            // them. A checksum is checked after its read, so a damaged file can leave
            // parameters overwritten; the load then fails and the caller reloads.
            let in_place = |var: &Tensor| var.device() == Device::Cpu && var.is_contiguous();
            let mut starts: Vec<usize> = present
                .iter()
                .filter(|(e, v)| in_place(v) && e.bytes > 0)
                .map(|(_, v)| v.data_ptr() as usize)
                .collect();
            starts.sort_unstable();
            let distinct = starts.windows(2).all(|w| w[0] != w[1]);
            let mut targets: Vec<(&str, &mut [u8])> = Vec::new();
            for (e, var) in &present {
                if in_place(var) && e.bytes > 0 {
                    // SAFETY: `var` is a contiguous host tensor whose shape and dtype `check`
                    // matched to the entry, so it spans exactly `e.bytes` bytes; gradients are
                    // off and nothing else reads it during the load. No two targets share
                    // memory (`distinct`), or they are read one at a time below.
                    let out = unsafe { std::slice::from_raw_parts_mut(var.data_ptr() as *mut u8, e.bytes as usize) };
                    if distinct {
                        targets.push((e.name.as_str(), out));
                    } else {
                        file.read_into(&e.name, out)?;
                    }
                } else if !in_place(var) {
                    let host = read_tensor(file, e)?;
                    var.shallow_clone().f_copy_(&host).map_err(torch)?;
                }
            }
            if let Some(host) = &mut opt_host {
                targets.extend(host_targets(&opt_entries, host));
            }
            file.read_many_into(&mut targets)?;
        }
        Strategy::Standard => {
            let mut staged = Vec::with_capacity(present.len());
            if device == Device::Cpu {
                let entries: Vec<&Entry> = present.iter().map(|(e, _)| *e).collect();
                staged = empty_tensors(file, &entries)?;
                let mut targets = host_targets(&entries, &mut staged);
                if let Some(host) = &mut opt_host {
                    targets.extend(host_targets(&opt_entries, host));
                }
                file.read_many_into(&mut targets)?;
            } else {
                for (e, _) in &present {
                    staged.push(read_tensor(file, e)?.f_to_device(device).map_err(torch)?);
                }
            }
            for ((_, var), t) in present.iter().zip(&staged) {
                var.shallow_clone().f_copy_(t).map_err(torch)?;
            }
        }
    }
    outcome.weights = present.len();

    if let Some(optimizer) = optimizer {
        let mut state = HashMap::new();
        if let Some(host) = opt_host {
            // Read above, with the weights.
            for (e, t) in opt_entries.iter().zip(host) {
                state.insert(e.name[OPTIMIZER_PREFIX.len()..].to_string(), t);
            }
        } else {
            for e in &opt_entries {
                let t = read_tensor(file, e)?.f_to_device(device).map_err(torch)?;
                state.insert(e.name[OPTIMIZER_PREFIX.len()..].to_string(), t);
            }
        }
        outcome.optimizer_tensors = state.len();
        optimizer.load_state(state).map_err(|source| CheckpointError::Optimizer { path: path.clone(), source })?;
        outcome.optimizer_restored = true;
    }
    Ok(outcome)
}

fn check(path: &Path, e: &Entry, var: &Tensor) -> Result<(), CheckpointError> {
    let shape: Vec<i64> = e.shape.iter().map(|&d| d as i64).collect();
    if shape != var.size() || to_kind(e.dtype) != Some(var.kind()) {
        return Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            tensor: e.name.clone(),
            expected: format!("{:?} {:?}", var.kind(), var.size()),
            found: format!("{:?} {:?}", e.dtype, e.shape),
        });
    }
    Ok(())
}

/// Reads one tensor from the file straight into a new host tensor of its shape (one copy,
/// no intermediate buffer), checked against its checksum.
pub(super) fn read_tensor(file: &CheckpointFile, e: &Entry) -> Result<Tensor, CheckpointError> {
    Ok(read_tensors(file, &[e])?.pop().expect("one tensor per entry"))
}

/// Reads tensors into new host tensors of their shapes, in one
/// [`CheckpointFile::read_many_into`] (parallel across tensors for a compressed file), each
/// checked against its checksum.
fn read_tensors(file: &CheckpointFile, entries: &[&Entry]) -> Result<Vec<Tensor>, CheckpointError> {
    let mut tensors = empty_tensors(file, entries)?;
    file.read_many_into(&mut host_targets(entries, &mut tensors))?;
    Ok(tensors)
}

/// New, uninitialised host tensors of the entries' shapes and dtypes.
fn empty_tensors(file: &CheckpointFile, entries: &[&Entry]) -> Result<Vec<Tensor>, CheckpointError> {
    entries
        .iter()
        .map(|e| {
            let kind: Kind = to_kind(e.dtype).ok_or_else(|| FileError::Malformed {
                path: file.path().to_path_buf(),
                reason: format!("tensor `{}` has unsupported dtype {:?}", e.name, e.dtype),
            })?;
            let shape: Vec<i64> = e.shape.iter().map(|&d| d as i64).collect();
            Ok(Tensor::empty(shape.as_slice(), (kind, Device::Cpu)))
        })
        .collect()
}

/// The bytes of `tensors` (made by [`empty_tensors`] from `entries`) as read targets, leaving
/// out empty ones.
fn host_targets<'a>(entries: &'a [&Entry], tensors: &'a mut [Tensor]) -> Vec<(&'a str, &'a mut [u8])> {
    entries
        .iter()
        .zip(tensors)
        .filter(|(e, _)| e.bytes > 0)
        .map(|(e, t)| {
            // SAFETY: `t` is a fresh contiguous host tensor of exactly `e.bytes` bytes (its
            // shape and dtype are the entry's, whose size the header check tied to `e.bytes`);
            // each is a separate allocation, and nothing else reads or writes it while the
            // slice is alive (the tensors are not used until the read is done).
            let bytes = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, e.bytes as usize) };
            (e.name.as_str(), bytes)
        })
        .collect()
}

/// Whether to restore the optimiser from a checkpoint, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptimizerRestore {
    /// Load its state.
    Restore,
    /// Start it fresh, for this reason (logged).
    Fresh(String),
}

/// The one rule for restoring optimiser state: only with a strategy that loads it (not
/// `model_only`, which `memory.load_optimizer_state: false` forces), from a file that holds
/// some, written by the same kind of optimiser.
pub fn restore_optimizer(strategy: Strategy, meta: &Meta, configured: OptimizerKind) -> OptimizerRestore {
    let saved = meta.optimizer.get("kind").and_then(|k| k.as_str());
    let ours = serde_json::to_value(configured).ok().and_then(|k| k.as_str().map(str::to_string));
    if !strategy.loads_optimizer() {
        OptimizerRestore::Fresh("loading with model_only: momentum and moment estimates start fresh".into())
    } else if !meta.has_optimizer_state {
        OptimizerRestore::Fresh("the checkpoint holds no optimizer state".into())
    } else if saved != ours.as_deref() {
        OptimizerRestore::Fresh(format!(
            "the checkpoint's optimizer is {}, the configured one {}",
            saved.unwrap_or("unknown"),
            ours.as_deref().unwrap_or("unknown")
        ))
    } else {
        OptimizerRestore::Restore
    }
}

/// Whether a load failed because the device ran out of memory (the case a cheaper
/// strategy may fix).
pub fn is_out_of_memory(e: &CheckpointError) -> bool {
    match e {
        CheckpointError::Torch { source, .. } => crate::fault::is_oom_message(&source.to_string()),
        _ => false,
    }
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
    let restore = restore_optimizer(Strategy::MemoryEfficient, &m, optimizer.config().kind);
    if let OptimizerRestore::Fresh(why) = &restore {
        tracing::info!("the optimizer starts fresh: {why}");
        optimizer.reset_state();
    }
    let optimizer = (restore == OptimizerRestore::Restore).then_some(optimizer);
    load_into(&file, &vs.variables(), optimizer, device, Strategy::MemoryEfficient, true)?;
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
    let outcome = load_into(&file, &vs.variables(), None, vs.device(), Strategy::ModelOnly, strict)?;
    let m = file.meta_or_imported();
    Ok((m.epoch(), m.train_loss, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_optimizer_is_restored_only_from_state_of_its_own_kind() {
        let m = Meta::sample("adamw", true);
        assert_eq!(restore_optimizer(Strategy::MemoryEfficient, &m, OptimizerKind::Adamw), OptimizerRestore::Restore);
        assert_eq!(restore_optimizer(Strategy::Standard, &m, OptimizerKind::Adamw), OptimizerRestore::Restore);
        let OptimizerRestore::Fresh(why) = restore_optimizer(Strategy::Standard, &m, OptimizerKind::Sgd) else {
            panic!("another optimizer kind must start fresh")
        };
        assert!(why.contains("adamw") && why.contains("sgd"), "{why}");
    }

    #[test]
    fn model_only_and_weights_only_files_start_the_optimizer_fresh() {
        let m = Meta::sample("adamw", true);
        assert!(matches!(restore_optimizer(Strategy::ModelOnly, &m, OptimizerKind::Adamw), OptimizerRestore::Fresh(_)));
        let weights_only = Meta::sample("adamw", false);
        assert!(matches!(
            restore_optimizer(Strategy::MemoryEfficient, &weights_only, OptimizerKind::Adamw),
            OptimizerRestore::Fresh(_)
        ));
    }
}

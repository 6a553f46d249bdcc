//! Loading a checkpoint into a model's variables and an optimiser.
//!
//! Two strategies, after the seed guide:
//! - [`LoadStrategy::Standard`] materialises every tensor on the target device first, then
//!   assigns them: peak device memory is the model plus the whole checkpoint.
//! - [`LoadStrategy::MemoryEfficient`] streams: one tensor is copied from the file to host
//!   memory, then into its parameter on the device, then dropped, before the next one:
//!   peak device memory is the model alone, peak host memory the largest tensor.

use std::collections::HashMap;

use safetensors::tensor::TensorView;
use tch::{Device, Tensor};

use super::format::{kind_of, CheckpointFile};
use super::{CheckpointError, OPTIMIZER_PREFIX};
use crate::optim::Optimizer;

/// How tensors travel from the file to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadStrategy {
    /// Everything to the device first, then assign.
    Standard,
    /// One tensor at a time through host memory.
    MemoryEfficient,
}

/// What a load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOutcome {
    /// Model tensors restored.
    pub weights: usize,
    /// Optimiser state tensors restored (0 when not loaded or absent).
    pub optimizer_tensors: usize,
    /// Whether the optimiser's state came from the checkpoint.
    pub optimizer_restored: bool,
}

/// Loads `file` into `vars` (the model's named variables, on `device`) and, when given,
/// `optimizer`. Strict: every variable must be present with its shape and dtype, and the
/// file may hold no other weights. Optimiser state is restored when `optimizer` is given
/// and the file has it; otherwise the optimiser is left with fresh state.
pub fn load_into(
    file: &CheckpointFile,
    vars: &HashMap<String, Tensor>,
    optimizer: Option<&mut (dyn Optimizer + 'static)>,
    device: Device,
    strategy: LoadStrategy,
) -> Result<LoadOutcome, CheckpointError> {
    let path = file.path().to_path_buf();
    let tensors = file.tensors();
    for name in tensors.names() {
        if !name.starts_with(OPTIMIZER_PREFIX) && !vars.contains_key(name) {
            return Err(CheckpointError::UnexpectedTensor { path, tensor: name.to_string() });
        }
    }
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let view = |name: &str| {
        tensors.tensor(name).map_err(|_| CheckpointError::MissingTensor { path: path.clone(), tensor: name.into() })
    };
    // Validate every weight before touching any, so a mismatch leaves the model as it was.
    for name in &names {
        check(&path, name, &view(name)?, &vars[*name])?;
    }
    let _guard = tch::no_grad_guard();
    match strategy {
        LoadStrategy::MemoryEfficient => {
            for name in &names {
                let host = to_tensor(file, name, &view(name)?)?;
                assign(&path, name, &vars[*name], &host)?;
            }
        }
        LoadStrategy::Standard => {
            let staged = names
                .iter()
                .map(|name| Ok(to_tensor(file, name, &view(name)?)?.to_device(device)))
                .collect::<Result<Vec<_>, CheckpointError>>()?;
            for (name, t) in names.iter().zip(&staged) {
                assign(&path, name, &vars[*name], t)?;
            }
        }
    }

    let mut outcome = LoadOutcome { weights: names.len(), optimizer_tensors: 0, optimizer_restored: false };
    if let Some(optimizer) = optimizer {
        if file.meta().has_optimizer_state {
            let mut state = HashMap::new();
            for (name, v) in tensors.iter() {
                if let Some(short) = name.strip_prefix(OPTIMIZER_PREFIX) {
                    state.insert(short.to_string(), to_tensor(file, name, &v)?.to_device(device));
                }
            }
            outcome.optimizer_tensors = state.len();
            optimizer.load_state(state).map_err(|source| CheckpointError::Optimizer { path, source })?;
            outcome.optimizer_restored = true;
        }
    }
    Ok(outcome)
}

fn check(path: &std::path::Path, name: &str, v: &TensorView<'_>, var: &Tensor) -> Result<(), CheckpointError> {
    let shape: Vec<i64> = v.shape().iter().map(|&d| d as i64).collect();
    let kind = kind_of(v.dtype());
    if shape != var.size() || kind != Some(var.kind()) {
        return Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            expected: format!("{:?} {:?}", var.kind(), var.size()),
            found: format!("{:?} {:?}", v.dtype(), v.shape()),
        });
    }
    Ok(())
}

/// Copies one tensor's bytes out of the file into a host tensor, checking its checksum.
fn to_tensor(file: &CheckpointFile, name: &str, v: &TensorView<'_>) -> Result<Tensor, CheckpointError> {
    let path = file.path();
    let kind = kind_of(v.dtype()).ok_or_else(|| CheckpointError::Malformed {
        path: path.to_path_buf(),
        reason: format!("tensor `{name}` has unsupported dtype {:?}", v.dtype()),
    })?;
    let shape: Vec<i64> = v.shape().iter().map(|&d| d as i64).collect();
    Tensor::f_from_data_size(file.verified_data(name)?, &shape, kind)
        .map_err(|source| CheckpointError::Torch { path: path.to_path_buf(), source })
}

fn assign(path: &std::path::Path, _name: &str, var: &Tensor, value: &Tensor) -> Result<(), CheckpointError> {
    let mut var = var.shallow_clone();
    var.f_copy_(value).map_err(|source| CheckpointError::Torch { path: path.to_path_buf(), source })
}

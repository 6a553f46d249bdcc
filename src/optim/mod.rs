//! Optimisers whose state is a set of named tensors, so that it can be checkpointed,
//! inspected and left out on purpose (`memory.load_optimizer_state: false`).
//!
//! tch's own `nn::Optimizer` cannot export its state, hence these. Each one follows the
//! single-tensor (non-foreach) code path of its `torch.optim` namesake operation for
//! operation; `tests/optim_reference.rs` checks them against PyTorch on the same inputs.
//!
//! State tensors are named `<parameter>/<slot>`, e.g. `fc1.weight/exp_avg`; a slot that
//! PyTorch creates lazily on the first step is absent until then here too.

mod adam;
pub mod config;
mod sgd;

use std::collections::HashMap;

use tch::Tensor;

pub use adam::Adam;
pub use sgd::Sgd;

use config::{OptimizerConfig, OptimizerKind};

/// Problems restoring optimiser state; each names the tensor.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// A state tensor for a parameter the model does not have, or a slot the optimiser does not use.
    #[error("optimizer state `{name}` does not belong to this model and optimizer")]
    Unexpected {
        /// The state tensor's name.
        name: String,
    },
    /// A state tensor whose shape or dtype differs from its parameter's.
    #[error("optimizer state `{name}` is {found}, expected {expected}")]
    Mismatch {
        /// The state tensor's name.
        name: String,
        /// Shape and dtype the parameter needs.
        expected: String,
        /// Shape and dtype found.
        found: String,
    },
}

/// A parameter the optimiser updates, under its model name.
#[derive(Debug)]
pub struct Param {
    /// `fc1.weight` and the like.
    pub name: String,
    /// The parameter itself (a shallow clone sharing storage with the model's).
    pub tensor: Tensor,
}

/// An optimiser with exportable state.
pub trait Optimizer: Send {
    /// Applies one update from the gradients currently held by the parameters.
    fn step(&mut self);
    /// Zeroes every parameter's gradient.
    fn zero_grad(&mut self);
    /// The state as named tensors (`<parameter>/<slot>`), sharing storage with the optimiser.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Replaces the state with `state`; names absent from it start fresh.
    fn load_state(&mut self, state: HashMap<String, Tensor>) -> Result<(), OptimError>;
    /// Drops all state, as a newly built optimiser has none.
    fn reset_state(&mut self);
    /// Which optimiser and its settings, as recorded in checkpoint metadata.
    fn config(&self) -> &OptimizerConfig;
    /// Sets the learning rate of the next steps (the schedule calls it before each step).
    fn set_lr(&mut self, lr: f64);
}

/// Builds the configured optimiser over `params` (sorted by name for a stable order).
pub fn build(cfg: &OptimizerConfig, mut params: Vec<Param>) -> Box<dyn Optimizer> {
    params.sort_by(|a, b| a.name.cmp(&b.name));
    match cfg.kind {
        OptimizerKind::Sgd => Box::new(Sgd::new(cfg.clone(), params)),
        OptimizerKind::Adam => Box::new(Adam::new(cfg.clone(), params, false)),
        OptimizerKind::Adamw => Box::new(Adam::new(cfg.clone(), params, true)),
    }
}

/// Bytes of state the configured optimiser holds once every parameter has taken a step,
/// for parameters of `param_bytes` in all, `params` of them: Adam keeps two moments of each
/// parameter's size and an int64 step per parameter; SGD one momentum buffer, if any.
pub fn state_bytes(cfg: &OptimizerConfig, param_bytes: u64, params: u64) -> u64 {
    match cfg.kind {
        OptimizerKind::Adam | OptimizerKind::Adamw => 2 * param_bytes + 8 * params,
        OptimizerKind::Sgd if cfg.momentum > 0.0 => param_bytes,
        OptimizerKind::Sgd => 0,
    }
}

/// Checks that a loaded state tensor can stand in for `like` and returns it on `like`'s device.
fn adopt(name: &str, loaded: Tensor, like: &Tensor) -> Result<Tensor, OptimError> {
    if loaded.size() != like.size() || loaded.kind() != like.kind() {
        return Err(OptimError::Mismatch {
            name: name.to_string(),
            expected: format!("{:?} {:?}", like.kind(), like.size()),
            found: format!("{:?} {:?}", loaded.kind(), loaded.size()),
        });
    }
    Ok(loaded.to_device(like.device()))
}

fn zero_grads(params: &[Param]) {
    for p in params {
        let mut grad = p.tensor.grad();
        if grad.defined() {
            let _ = grad.zero_();
        }
    }
}

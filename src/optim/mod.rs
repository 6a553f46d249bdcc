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
mod base;
pub mod config;
mod sgd;

pub use adam::Adam;
pub use base::{GradOf, OptimError, Optimizer, Param};
pub use sgd::Sgd;

use config::{OptimizerConfig, OptimizerKind};

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

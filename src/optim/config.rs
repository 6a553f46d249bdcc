//! `training.optimizer:` the optimiser and its hyper-parameters.

use serde::{Deserialize, Serialize};

use crate::serde_exact::exactly_n;

/// `training.optimizer:` the keys of every kind; each kind reads the ones it uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// `sgd`, `adam` or `adamw`.
    pub kind: OptimizerKind,
    /// Learning rate, in (0, `config::MAX_LR`].
    pub lr: f64,
    /// Adam/AdamW: decay rates of the first and second moment estimates: exactly two, each
    /// in [0, 1).
    #[serde(deserialize_with = "exactly_n")]
    pub betas: [f64; 2],
    /// Adam/AdamW: term added to the denominator for numerical stability.
    pub eps: f64,
    /// L2 penalty (SGD, Adam) or decoupled weight decay (AdamW).
    pub weight_decay: f64,
    /// SGD: momentum factor, in [0, 1) (0 disables the momentum buffer; at 1 or more the
    /// buffer never decays and the steps grow without bound).
    pub momentum: f64,
    /// SGD: dampening for momentum, in [0, 1] (the share of each gradient left out of the
    /// buffer; outside it the gradient is amplified or reversed).
    pub dampening: f64,
    /// SGD: Nesterov momentum.
    pub nesterov: bool,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Adamw,
            lr: 1e-3,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 1e-2,
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
        }
    }
}

/// The optimisers, each matching its `torch.optim` namesake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// `torch.optim.SGD`
    Sgd,
    /// `torch.optim.Adam`
    Adam,
    /// `torch.optim.AdamW`
    Adamw,
}

impl OptimizerKind {
    /// Its name as `training.optimizer.kind` spells it (and checkpoints record it).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sgd => "sgd",
            Self::Adam => "adam",
            Self::Adamw => "adamw",
        }
    }

    /// The state it keeps per parameter, by PyTorch's slot names, and whether it counts
    /// steps (a `step` slot).
    pub fn slots(self) -> (&'static [&'static str], bool) {
        match self {
            Self::Sgd => (&["momentum_buffer"], false),
            Self::Adam | Self::Adamw => (&["exp_avg", "exp_avg_sq"], true),
        }
    }
}

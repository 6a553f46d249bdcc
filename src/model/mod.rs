//! The models, built from `model:` into a [`tch::nn::VarStore`] for a data set's task.
//!
//! Parameter names are PyTorch's (`fc1.weight`, `h.0.attn.c_attn.weight`), so checkpoints
//! read like a `state_dict` in Python, TorchScript modules' included (each dot a level of
//! nesting in the `VarStore`).

mod archive;
mod budget;
mod builder;
pub mod config;
mod error;
mod nets;
mod network;
mod pickle;
mod probe;
pub mod script;
mod size;
mod storages;
mod task;

pub use archive::{frozen_mode, state_dict_keys, Frozen, STATE_DICT_KEYS};
pub use budget::MAX_PARAMETERS;
pub use builder::{build, build_within};
pub use error::ModelError;
pub use network::{Forward, Model, Network};
pub use size::parameter_count;
pub use task::task_loss;

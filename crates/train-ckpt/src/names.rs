//! The names in a checkpoint and what they say: a tensor's name gives its [`Role`] (model
//! state under its PyTorch name, optimiser state under `optimizer/<param>/<slot>`: a `/`
//! never occurs in PyTorch parameter names, so the two cannot collide), and a file's name
//! suffix the format it is written in.

use serde::Serialize;

/// Prefix of optimiser-state tensor names. Outside this file, ask an entry its [`Role`]
/// and name optimiser state with [`optimizer_entry`] instead of testing this prefix.
pub const OPTIMIZER_PREFIX: &str = "optimizer/";

/// What a tensor of a checkpoint is for, which the reader gives each entry: from its name
/// in our files, from where it sits in a `torch.save` file. Parameters and buffers
/// (BatchNorm's running statistics) are both model state: neither our files nor a PyTorch
/// `state_dict` tell them apart, and both load the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The model's state: a parameter or a buffer, under its PyTorch name.
    Model,
    /// The optimiser's state: one slot (`exp_avg`, `step`, ...) of one parameter, ours or
    /// in a PyTorch optimizer state dict.
    Optimizer,
    /// Anything else a `torch.save` file holds beside both, such as a 0-d `loss`.
    Other,
}

impl Role {
    /// The role of the tensor stored under `name` in a checkpoint's tensor list (ours, or a
    /// `torch.save` file's model state dict).
    pub fn of(name: &str) -> Role {
        if name.starts_with(OPTIMIZER_PREFIX) {
            Role::Optimizer
        } else {
            Role::Model
        }
    }
}

/// The name under which optimiser slot `key` (`<param>/<slot>`) is stored.
pub fn optimizer_entry(key: &str) -> String {
    format!("{OPTIMIZER_PREFIX}{key}")
}

/// The optimiser slot key (`<param>/<slot>`) of an optimiser-state entry's name; `None`
/// for model state.
pub fn optimizer_key(name: &str) -> Option<&str> {
    name.strip_prefix(OPTIMIZER_PREFIX)
}

/// File-name suffix of plain checkpoints.
pub const PLAIN_SUFFIX: &str = ".safetensors";
/// File-name suffix of compressed checkpoints (the `tckpt` format).
pub const COMPRESSED_SUFFIX: &str = ".tckpt";

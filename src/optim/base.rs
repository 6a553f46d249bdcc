//! What every optimiser shares: the [`Optimizer`] trait, the [`Param`]s it updates, and
//! restoring state ([`OptimError`]).

use std::collections::HashMap;

use tch::Tensor;

use super::config::OptimizerConfig;

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

/// A parameter the optimiser updates, under its model name: a whole parameter, or (with
/// sharded optimizer state, see `crate::distributed::partition`) one rank's contiguous
/// piece of it, a 1-D view of the flattened parameter.
#[derive(Debug)]
pub struct Param {
    /// `fc1.weight` and the like.
    pub name: String,
    /// The parameter itself (a shallow clone sharing storage with the model's), or a view of
    /// its piece.
    pub tensor: Tensor,
    /// Where its gradient is.
    pub grad: GradOf,
}

/// Where a [`Param`]'s gradient is read from at each step.
#[derive(Debug)]
pub enum GradOf {
    /// Its own `.grad` (a whole parameter).
    Own,
    /// Elements `offset..offset + len` of the flattened `.grad` of the whole parameter
    /// `of` (a piece whose gradient was all-reduced whole: ZeRO-1).
    Slice {
        /// The whole parameter.
        of: Tensor,
        /// First element of the piece.
        offset: i64,
        /// Elements in the piece.
        len: i64,
    },
    /// A tensor of the piece's size that the step's reduce-scatter fills (ZeRO-2).
    Held(Tensor),
}

impl Param {
    /// A whole parameter, its gradient its own.
    pub fn whole(name: String, tensor: Tensor) -> Self {
        Self { name, tensor, grad: GradOf::Own }
    }

    /// Its gradient now (undefined when backward produced none).
    pub fn grad(&self) -> Tensor {
        match &self.grad {
            GradOf::Own => self.tensor.grad(),
            GradOf::Slice { of, offset, len } => {
                let g = of.grad();
                if g.defined() {
                    g.view(-1).narrow(0, *offset, *len)
                } else {
                    g
                }
            }
            GradOf::Held(g) => g.shallow_clone(),
        }
    }
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

/// Checks that a loaded state tensor can stand in for `like` and returns it on `like`'s device.
pub(super) fn adopt(name: &str, loaded: Tensor, like: &Tensor) -> Result<Tensor, OptimError> {
    if loaded.size() != like.size() || loaded.kind() != like.kind() {
        return Err(OptimError::Mismatch {
            name: name.to_string(),
            expected: format!("{:?} {:?}", like.kind(), like.size()),
            found: format!("{:?} {:?}", loaded.kind(), loaded.size()),
        });
    }
    Ok(loaded.to_device(like.device()))
}

pub(super) fn zero_grads(params: &[Param]) {
    for p in params {
        let mut grad = p.grad();
        if grad.defined() {
            let _ = grad.zero_();
        }
    }
}

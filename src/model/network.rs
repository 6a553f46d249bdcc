//! What the training loop drives: a [`Network`] of a batch's inputs, and what its forward
//! pass gives.

use tch::nn::ModuleT;
use tch::Tensor;

/// What a forward pass gives: the outputs, and the loss when the model computed its own.
#[derive(Debug)]
pub struct Forward {
    /// `[N, outputs]` logits or values (`[N, T, vocab]` for a language model).
    pub logits: Tensor,
    /// The module's own loss (a TorchScript module given labels, as Hugging Face's are).
    pub loss: Option<Tensor>,
}

/// A network the training loop can drive: a function of a batch's inputs (one, or several
/// a TorchScript module takes by name) and, for a module that computes its own loss, its
/// targets; its parameters are held in the `VarStore` it was built in.
pub trait Network: Send + std::fmt::Debug {
    /// Runs the network in train (`train`) or eval mode.
    fn forward(&self, inputs: &[Tensor], targets: Option<&Tensor>, train: bool) -> Forward;
}

/// The built-in networks, functions of one input.
#[derive(Debug)]
pub(super) struct Builtin<M>(pub(super) M);

impl<M: ModuleT + Send + std::fmt::Debug> Network for Builtin<M> {
    fn forward(&self, inputs: &[Tensor], _targets: Option<&Tensor>, train: bool) -> Forward {
        Forward { logits: self.0.forward_t(&inputs[0], train), loss: None }
    }
}

/// A model the training loop can drive.
pub type Model = Box<dyn Network>;

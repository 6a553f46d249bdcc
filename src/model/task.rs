//! What a model's outputs are for a data set's task: how many, and the loss over them.

use tch::Tensor;

use crate::data::Task;

/// Outputs per example the task needs: classes, vocabulary, or values.
pub(super) fn outputs_of(task: Task) -> i64 {
    match task {
        Task::Classification { classes } => classes,
        Task::Regression { outputs } => outputs,
        Task::LanguageModel { vocab } => vocab,
    }
}

/// The mean loss of a batch for `task`: cross-entropy over classes or over every token's
/// next byte, or mean squared error.
pub fn task_loss(task: Task, out: &Tensor, targets: &Tensor) -> Tensor {
    match task {
        Task::Classification { .. } => out.cross_entropy_for_logits(targets),
        // A TorchScript module's vocabulary may be larger than the ids the data holds.
        Task::LanguageModel { .. } => {
            let vocab = *out.size().last().expect("logits have a vocabulary dimension");
            out.view([-1, vocab]).cross_entropy_for_logits(&targets.view([-1]))
        }
        Task::Regression { .. } => out.mse_loss(targets, tch::Reduction::Mean),
    }
}

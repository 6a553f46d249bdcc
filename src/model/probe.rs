//! Trying a TorchScript module on the data before training, as training will run it.
//!
//! A module is somebody's program: it may raise only when `self.training`, change its
//! output's shape in train mode, drop a row when the batch holds more than two, return
//! integers, detach its outputs, have no parameters at all, or reassign its parameters in
//! `forward`. Each of those crashed the first training step (the second hardening report,
//! item 3). So the module is run here, before anything is written, on a batch of the size
//! training uses, in eval mode and then in train mode with a backward pass, and each
//! output is checked against what the task needs: its full shape and its dtype.
//!
//! The probe leaves no trace. Every parameter and buffer (BatchNorm's running statistics,
//! `num_batches_tracked`) is copied before and put back after, and the gradients it made
//! are zeroed. libtorch's generators need no restoring: every training step re-seeds them
//! from (seed, step) (see `crate::training`).

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::error::ModelError;
use super::nets::Scripted;
use super::script::ScriptError;
use super::task::task_loss;
use crate::data::Task;
use crate::fault::{catch_torch, is_oom_message, libtorch_message};

/// Runs the checks above on `inputs`/`targets` (a batch of the configured size, on the
/// model's device). A batch that runs out of memory is halved until it fits (training's
/// own step-down does the same), down to one example.
pub(super) fn run(
    scripted: &Scripted,
    path: &Path,
    task: Task,
    inputs: &[Tensor],
    targets: &Tensor,
) -> Result<(), ModelError> {
    let refuse = |reason: String| ModelError::Incompatible { kind: "torchscript".into(), reason };
    let (parameters, buffers) = scripted.tensors().map_err(|e| refuse(format!("{}: {e}", path.display())))?;
    if !parameters.iter().any(|(_, t)| t.requires_grad()) {
        return Err(refuse(format!(
            "{} has no trainable parameters: there is nothing to train (were they all frozen, or made buffers?)",
            path.display()
        )));
    }
    let saved: Vec<Tensor> = parameters.iter().chain(&buffers).map(|(_, t)| t.copy()).collect();
    // What each parameter is now, by value: the handles share the module's tensors, which
    // a `set_` in forward would change under them.
    let layout: Vec<Layout> = parameters
        .iter()
        .map(|(n, t)| Layout { name: n.clone(), size: t.size(), data: t.data_ptr() as usize })
        .collect();
    let mut n = targets.size()[0];
    let result = loop {
        let (xs, ys): (Vec<Tensor>, Tensor) =
            (inputs.iter().map(|x| x.narrow(0, 0, n)).collect(), targets.narrow(0, 0, n));
        match both_modes(scripted, path, task, &xs, &ys, &layout) {
            Err(Failure::Oom(msg)) if n > 1 => {
                tracing::info!(batch = n, "trying the module ran out of memory ({msg}); trying half the batch");
                crate::memory::cuda::empty_cache();
                n /= 2;
            }
            Err(Failure::Oom(msg)) => break Err(refuse(format!("out of memory on one example: {msg}"))),
            Err(Failure::Refused(reason)) => break Err(refuse(reason)),
            Ok(()) => break Ok(()),
        }
    };
    // Put back whatever the module's forward passes moved, even after a refusal.
    let _guard = tch::no_grad_guard();
    for ((_, t), before) in parameters.iter().chain(&buffers).zip(&saved) {
        if t.size() == before.size() {
            let mut t = t.shallow_clone();
            let _ = t.f_copy_(before);
        }
    }
    for (_, t) in &parameters {
        if t.grad().defined() {
            let mut t = t.shallow_clone();
            t.zero_grad();
        }
    }
    result
}

/// Why a probe failed.
enum Failure {
    /// Out of memory: worth trying a smaller batch.
    Oom(String),
    /// The module does not fit the data or cannot train.
    Refused(String),
}

fn both_modes(
    scripted: &Scripted,
    path: &Path,
    task: Task,
    xs: &[Tensor],
    ys: &Tensor,
    parameters: &[Layout],
) -> Result<(), Failure> {
    let n = ys.size()[0];
    let failed = |mode: &str, msg: String| {
        if is_oom_message(&msg) {
            Failure::Oom(msg)
        } else {
            let advice = advice(&msg, xs);
            Failure::Refused(format!("{} fails in {mode} mode on a batch of {n}: {msg}{advice}", path.display()))
        }
    };
    let shapes = |out: &Tensor| format!("{:?} {:?}", out.size(), out.kind());
    for train in [false, true] {
        let mode = if train { "train" } else { "eval" };
        let out = if train {
            scripted.try_forward(xs, Some(ys), true)
        } else {
            tch::no_grad(|| scripted.try_forward(xs, Some(ys), false))
        }
        .map_err(|e| failed(mode, e.0))?;
        check_output(task, &out.logits.size(), out.logits.kind(), &ys.size()).map_err(|need| {
            Failure::Refused(format!(
                "{} returns {} in {mode} mode on a batch of {n}; the data needs {need}",
                path.display(),
                shapes(&out.logits)
            ))
        })?;
        if train {
            let loss = match out.loss {
                Some(own) => own,
                None => catch_torch(|| task_loss(task, &out.logits, ys)).map_err(|e| failed(mode, e.message()))?,
            };
            if !loss.is_floating_point() || loss.numel() != 1 {
                return Err(Failure::Refused(format!(
                    "{} returns a loss of {}: a loss is one floating-point number",
                    path.display(),
                    shapes(&loss)
                )));
            }
            if !loss.requires_grad() {
                return Err(Failure::Refused(format!(
                    "the loss of {} does not depend on any trainable parameter in train mode: its outputs are \
                     detached (.detach(), torch.no_grad() or .data in forward)",
                    path.display()
                )));
            }
            loss.f_backward().map_err(|e| failed("train (backward)", libtorch_message(&e)))?;
        }
        check_parameters_kept(scripted, path, parameters).map_err(|e| Failure::Refused(e.to_string()))?;
    }
    Ok(())
}

/// What to change, for the libtorch errors a mismatch between the data and the module
/// usually gives (empty when there is nothing better to say than libtorch's line).
fn advice(msg: &str, xs: &[Tensor]) -> String {
    // Conv2d: "expected input[16, 1, 32, 32] to have 3 channels, but got 1 channels instead".
    if let Some(wanted) = msg.split(" to have ").nth(1).and_then(|r| r.split(" channels").next()) {
        if wanted.parse::<u32>().is_ok() {
            return format!(
                "; the model expects {wanted} channels: for an image folder set data.channels: {wanted}, for arrays \
                 give `x` {wanted} channels"
            );
        }
    }
    // An embedding given float32: "Expected tensor for argument #1 'indices' to have one of the
    // following scalar types: Long, Int; but got torch.FloatTensor instead".
    if msg.contains("'indices'") && xs.iter().any(|x| x.is_floating_point()) {
        return "; token ids reach the module as float32: name the inputs (model.torchscript.inputs: [x], or \
                [input_ids, attention_mask]) so integer arrays stay int64"
            .into();
    }
    String::new()
}

/// The output a task needs of a module, when its output does not fit: what a refusal
/// describes after "the data needs".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OutputNeeded {
    /// A classifier's logits.
    #[error("[{n}, C] logits with C >= {classes} classes, floating point")]
    Logits {
        /// The batch.
        n: i64,
        /// The data's classes.
        classes: i64,
    },
    /// A language model's logits at every position.
    #[error("[{n}, {positions}, V] logits with V >= {vocab}, floating point")]
    TokenLogits {
        /// The batch.
        n: i64,
        /// Positions per window.
        positions: i64,
        /// The data's vocabulary.
        vocab: i64,
    },
    /// Regression values of exactly the targets' shape.
    #[error("{targets:?} values, the targets' shape, floating point")]
    Values {
        /// The targets' shape.
        targets: Vec<i64>,
    },
}

/// What the task needs of a module's output of `shape` and `kind` for targets of
/// `targets` (whose first dimension is the batch): `Err` with a description of it.
/// A classifier's or language model's output may be wider than the data's classes or
/// vocabulary (a class absent from the data, a tokenizer's spare ids), not narrower.
pub(crate) fn check_output(task: Task, shape: &[i64], kind: Kind, targets: &[i64]) -> Result<(), OutputNeeded> {
    let n = targets[0];
    let (fits, need) = match task {
        Task::Classification { classes } => {
            (shape.len() == 2 && shape[0] == n && shape[1] >= classes, OutputNeeded::Logits { n, classes })
        }
        Task::LanguageModel { vocab } => (
            shape.len() == 3 && shape[..2] == targets[..2] && shape[2] >= vocab,
            OutputNeeded::TokenLogits { n, positions: targets.get(1).copied().unwrap_or_default(), vocab },
        ),
        // MSE broadcasts: [N] against [N, 1], or [N, 10] against [N, 1], would train silently
        // on the wrong differences. Exactly the targets' shape.
        Task::Regression { .. } => (shape == targets, OutputNeeded::Values { targets: targets.to_vec() }),
    };
    let float = matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16);
    if fits && float {
        Ok(())
    } else {
        Err(need)
    }
}

/// A parameter's name, shape and where its data lies.
struct Layout {
    name: String,
    size: Vec<i64>,
    data: usize,
}

/// A module whose `forward` changed its parameters.
#[derive(Debug, thiserror::Error)]
enum ParametersChanged {
    /// Its parameters could not be listed again.
    #[error("{0}")]
    Unlisted(#[from] ScriptError),
    /// `forward` replaced or resized a parameter.
    #[error(
        "{}'s forward replaces or resizes its parameter `{name}`: training updates the tensors the module \
         had when loaded, so parameters must stay the same tensors (update them in place, or make \
         this one a buffer)",
        path.display()
    )]
    Replaced {
        /// The module's file.
        path: PathBuf,
        /// The parameter.
        name: String,
    },
    /// `forward` registered a new parameter.
    #[error("{}'s forward adds the parameter `{name}`, which the optimizer would never see", path.display())]
    Added {
        /// The module's file.
        path: PathBuf,
        /// The parameter.
        name: String,
    },
}

/// Refuses a module whose `forward` replaced or resized a parameter: the optimizer and
/// the checkpoints hold the tensors registered at load, which would no longer be the
/// module's (or would be reset by every forward pass).
fn check_parameters_kept(scripted: &Scripted, path: &Path, before: &[Layout]) -> Result<(), ParametersChanged> {
    let (now, _) = scripted.tensors()?;
    for was in before {
        let kept = now.iter().any(|(n, t)| *n == was.name && t.size() == was.size && t.data_ptr() as usize == was.data);
        if !kept {
            return Err(ParametersChanged::Replaced { path: path.to_path_buf(), name: was.name.clone() });
        }
    }
    if let Some((name, _)) = now.iter().find(|(n, _)| !before.iter().any(|b| b.name == *n)) {
        return Err(ParametersChanged::Added { path: path.to_path_buf(), name: name.clone() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_channel_and_dtype_errors_get_the_setting_that_fixes_them() {
        let floats = [Tensor::zeros([2, 4], tch::kind::FLOAT_CPU)];
        let channels = "RuntimeError: Given groups=1, weight of size [8, 3, 3, 3], expected input[16, 1, 32, 32] to \
                        have 3 channels, but got 1 channels instead";
        assert!(advice(channels, &floats).contains("data.channels: 3"));
        let ids = "RuntimeError: Expected tensor for argument #1 'indices' to have one of the following scalar types: \
                   Long, Int; but got torch.FloatTensor instead (while checking arguments for embedding)";
        assert!(advice(ids, &floats).contains("model.torchscript.inputs: [x]"));
        assert_eq!(advice("RuntimeError: something else", &floats), "");
    }

    #[test]
    fn outputs_are_checked_in_full_against_the_task() {
        let classes = Task::Classification { classes: 3 };
        assert!(check_output(classes, &[16, 3], Kind::Float, &[16]).is_ok());
        assert!(check_output(classes, &[16, 5], Kind::Float, &[16]).is_ok(), "more classes than the data holds");
        assert!(check_output(classes, &[15, 3], Kind::Float, &[16]).is_err());
        assert!(check_output(classes, &[16, 3, 7], Kind::Float, &[16]).is_err());
        assert!(check_output(classes, &[16, 3], Kind::Int64, &[16]).is_err());
        // Issue 17, item 4: MSE would broadcast [N, 10] against [N, 1].
        let regression = Task::Regression { outputs: 1 };
        assert!(check_output(regression, &[16, 1], Kind::Float, &[16, 1]).is_ok());
        assert!(check_output(regression, &[16, 10], Kind::Float, &[16, 1]).is_err());
        assert!(check_output(regression, &[16], Kind::Float, &[16, 1]).is_err());
        let lm = Task::LanguageModel { vocab: 64 };
        assert!(check_output(lm, &[4, 32, 64], Kind::Float, &[4, 32]).is_ok());
        assert!(check_output(lm, &[4, 31, 64], Kind::Float, &[4, 32]).is_err());
    }
}

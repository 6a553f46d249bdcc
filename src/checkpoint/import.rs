//! Importing the optimizer state of a `torch.save` checkpoint (`optimizer_state_dict`, as the
//! seed guide's scripts save it) into `train`'s optimizer, so resuming a PyTorch run keeps
//! its Adam moments or SGD momentum instead of resetting them.
//!
//! PyTorch keys that state by parameter index, in the order the Python optimizer was given
//! the parameters: `named_parameters()` order for `torch.optim.X(model.parameters())`. The
//! model's parameters are taken in that order: a TorchScript module's are registered in its
//! own `named_parameters()` order, and the built-in models create theirs layer by layer,
//! weight before bias, as the equivalent `torch.nn` modules do. `train_ckpt`'s
//! [`PytorchOptimizer::assign`](train_ckpt::PytorchOptimizer::assign) refuses a count or
//! shape that does not line up; then the optimizer starts fresh and the log says why.

use std::collections::HashMap;

use tch::{Device, Tensor};

use train_ckpt::CheckpointFile;

use super::error::CheckpointError;
use super::load::OptimizerState;
use super::tensors::read_tensor;

/// What the configured optimiser keeps, which the imported state must fit.
#[derive(Debug, Clone, Copy)]
pub struct Keeps<'a> {
    /// Its name, for messages.
    pub name: &'a str,
    /// The state slots it keeps per parameter (besides `step`), by PyTorch's names.
    pub slots: &'a [&'a str],
    /// Whether it counts steps per parameter (`step`).
    pub steps: bool,
}

/// The model's trainable parameters by name in PyTorch's `named_parameters()` order: modules
/// in the order they were created (the `VarStore` keeps its trainable variables in the order
/// they were added; names come from the shared storage), and within a module `weight` before
/// `bias`, as `torch.nn` layers register them (tch creates a linear layer's bias first).
pub fn parameters_in_order(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let by_ptr: HashMap<usize, String> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(n, t)| (t.data_ptr() as usize, n))
        .collect();
    let created: Vec<(String, Tensor)> = vs
        .trainable_variables()
        .into_iter()
        .filter_map(|t| by_ptr.get(&(t.data_ptr() as usize)).cloned().map(|n| (n, t)))
        .collect();
    let module = |name: &str| name.rsplit_once('.').map_or("", |(m, _)| m).to_string();
    let mut modules: Vec<String> = Vec::new();
    for (name, _) in &created {
        let m = module(name);
        if !modules.contains(&m) {
            modules.push(m);
        }
    }
    let rank = |name: &str| match name.rsplit('.').next() {
        Some("weight") => 0,
        Some("bias") => 1,
        _ => 2,
    };
    let mut ordered: Vec<(usize, usize, usize, (String, Tensor))> = created
        .into_iter()
        .enumerate()
        .map(|(i, (n, t))| {
            let m = modules.iter().position(|x| *x == module(&n)).expect("every module was listed");
            (m, rank(&n), i, (n, t))
        })
        .collect();
    ordered.sort_by_key(|(m, r, i, _)| (*m, *r, *i));
    ordered.into_iter().map(|(_, _, _, p)| p).collect()
}

/// What [`import_pytorch_optimizer`] brought in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// Parameters that got state.
    pub parameters: usize,
    /// State tensors imported (moments and `step`s).
    pub tensors: usize,
    /// The largest `step` among them: the optimizer steps the PyTorch run took (`None` for
    /// SGD, which counts none).
    pub step: Option<u64>,
}

/// Reads `file`'s PyTorch optimizer state for an optimiser that keeps `keeps`, matching
/// PyTorch's parameter indices to `params` (the model's parameters in creation order), as
/// state by slot key on `device`. `Ok(None)` when the file holds no optimizer state. Errors
/// say why the state does not fit; the caller starts fresh.
pub fn import_pytorch_optimizer(
    file: &CheckpointFile,
    params: &[(String, Tensor)],
    keeps: Keeps<'_>,
    device: Device,
) -> Result<Option<(Imported, OptimizerState)>, CheckpointError> {
    let Some(saved) = file.pytorch_optimizer()? else { return Ok(None) };
    let path = file.path().to_path_buf();
    let mismatch = |reason: String| train_ckpt::Error::OptimizerMismatch { path: path.clone(), reason };
    let shapes: Vec<Vec<usize>> = params.iter().map(|(_, t)| t.size().iter().map(|&d| d as usize).collect()).collect();
    let named: Vec<(&str, &[usize])> =
        params.iter().zip(&shapes).map(|((n, _), s)| (n.as_str(), s.as_slice())).collect();
    let assigned = saved.assign(&named)?;
    let (kind, wanted) = (keeps.name, keeps.slots);
    let mut state = HashMap::new();
    let mut with_state = 0;
    let mut last_step: Option<u64> = None;
    for a in &assigned {
        let Some(s) = a.state else { continue };
        if let Some(other) = s.tensors.keys().find(|k| !wanted.contains(&k.as_str())) {
            return Err(mismatch(format!(
                "parameter {} (`{}`) has `{other}` state, which {kind} does not keep (it keeps {wanted:?})",
                a.index, a.name
            ))
            .into());
        }
        for (slot, entry) in &s.tensors {
            let t = read_tensor(file, entry)?
                .f_to_device(device)
                .map_err(|source| CheckpointError::Torch { path: path.clone(), source })?;
            state.insert(format!("{}/{slot}", a.name), t);
        }
        if keeps.steps {
            let step = s.step.ok_or_else(|| mismatch(format!("parameter {} (`{}`) has no `step`", a.index, a.name)))?;
            state.insert(format!("{}/step", a.name), Tensor::from(step as i64));
            last_step = last_step.max(Some(step as u64));
        }
        with_state += 1;
    }
    let tensors = state.len();
    Ok(Some((Imported { parameters: with_state, tensors, step: last_step }, state)))
}

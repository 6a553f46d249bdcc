//! Building the configured model into a `VarStore`: the built-in networks, or a TorchScript
//! module loaded, registered and tried on the data.

use tch::nn;
use tch::{Kind, Tensor};

use super::archive::{frozen_mode, state_dict_keys, Frozen, STATE_DICT_KEYS};
use super::budget::{available_memory, MAX_PARAMETERS, PARAMETER_BYTES, TRAINING_COPIES};
use super::config::{ModelConfig, ModelKind};
use super::error::ModelError;
use super::nets::{Cnn, Gpt, Mlp, Scripted};
use super::network::{Builtin, Model};
use super::probe;
use super::script::{ScriptError, ScriptModule};
use super::size::parameter_count;
use super::storages;
use super::storages::ArchiveError;
use super::task::outputs_of;
use crate::data::Task;
use crate::fault::libtorch_message;

/// Registers a TorchScript module's parameters and buffers in the `VarStore` under their
/// PyTorch names (`layer1.0.bn1.running_mean`: one path segment per dot, as our own models
/// nest), sharing storage with the module, so training updates the module, checkpoints hold
/// everything its `state_dict()` holds, and resume restores it. Buffers are registered as
/// not trainable, so the optimizer leaves them to the module's own updates.
///
/// `state_keys`, the Python module's `state_dict()` keys when the archive lists them (see
/// [`STATE_DICT_KEYS`]), leaves out the buffers it lacks: those Python registered
/// `persistent=False`, constants the archive itself restores.
fn register_tensors(module: &ScriptModule, root: &nn::Path, state_keys: Option<&[String]>) -> Result<(), ScriptError> {
    let parameters = module.named_parameters()?.into_iter().map(|(n, t)| (n, t.requires_grad(), t));
    let persistent = |name: &String| state_keys.is_none_or(|keys| keys.contains(name));
    let buffers = module.named_buffers()?.into_iter().filter(|(n, _)| persistent(n)).map(|(n, t)| (n, false, t));
    for (name, trainable, tensor) in parameters.chain(buffers) {
        let (path, last) = match name.rsplit_once('.') {
            Some((prefix, last)) => {
                let mut segments = prefix.split('.');
                let first = segments.next().expect("split yields at least one segment");
                (segments.fold(root.sub(first), |p, s| p.sub(s)), last)
            }
            None => (root.clone(), name.as_str()),
        };
        let _shared = path.add(last, tensor, trainable);
    }
    Ok(())
}

/// Builds the configured model for `task` with inputs of `input_shape` (one example),
/// refusing one whose weights and gradients would not fit in the memory of `root`'s device.
/// `probe`, a batch of the data (inputs and targets) of the size training uses, on that
/// device, is what a TorchScript module is tried on before training (two examples of zeros
/// of `input_shape` without one).
pub fn build(
    cfg: &ModelConfig,
    root: &nn::Path,
    task: Task,
    input_shape: &[i64],
    probe: Option<(&[Tensor], &Tensor)>,
) -> Result<Model, ModelError> {
    build_within(cfg, root, task, input_shape, available_memory(root.device()), probe)
}

/// [`build`] against a given memory figure: `(bytes, how to name it in an error)`.
pub fn build_within(
    cfg: &ModelConfig,
    root: &nn::Path,
    task: Task,
    input_shape: &[i64],
    memory: Option<(u64, String)>,
    probe: Option<(&[Tensor], &Tensor)>,
) -> Result<Model, ModelError> {
    let parameters = parameter_count(cfg, task, input_shape)?;
    let too_large = |limit: String| {
        let (key, value) = match cfg.kind {
            ModelKind::Mlp => ("model.mlp.hidden", format!("{:?}", cfg.mlp.hidden)),
            ModelKind::Cnn => {
                ("model.cnn", format!("{{channels: {:?}, hidden: {}}}", cfg.cnn.channels, cfg.cnn.hidden))
            }
            ModelKind::Gpt | ModelKind::Torchscript => (
                "model.gpt",
                format!(
                    "{{context: {}, width: {}, depth: {}, heads: {}}}",
                    cfg.gpt.context, cfg.gpt.width, cfg.gpt.depth, cfg.gpt.heads
                ),
            ),
        };
        ModelError::TooLarge {
            key,
            value,
            parameters,
            input_shape: input_shape.to_vec(),
            outputs: outputs_of(task),
            limit,
        }
    };
    if let Some((bytes, name)) = memory {
        if parameters.saturating_mul(PARAMETER_BYTES * TRAINING_COPIES) > u128::from(bytes) {
            return Err(too_large(name));
        }
    }
    if parameters > MAX_PARAMETERS {
        return Err(too_large(format!("the cap of {MAX_PARAMETERS} parameters")));
    }
    let outputs = outputs_of(task);
    match (cfg.kind, task) {
        (ModelKind::Gpt, Task::LanguageModel { vocab }) => Ok(Box::new(Builtin(Gpt::new(root, &cfg.gpt, vocab)))),
        (ModelKind::Torchscript, _) => build_torchscript(cfg, root, task, input_shape, probe),
        (ModelKind::Mlp, _) => {
            Ok(Box::new(Builtin(Mlp::new(root, input_shape.iter().product(), &cfg.mlp.hidden, outputs))))
        }
        (ModelKind::Cnn, _) => match *input_shape {
            [c, h, w] => Ok(Box::new(Builtin(Cnn::new(root, [c, h, w], cfg.cnn.channels, cfg.cnn.hidden, outputs)))),
            _ => unreachable!("parameter_count accepts only [C, H, W] inputs for cnn"),
        },
        (ModelKind::Gpt, _) => unreachable!("parameter_count refuses gpt without text data"),
    }
}

/// Loads `model.torchscript.path`, registers its tensors in `root`, and tries it on
/// `probe` (a batch of the configured size: inputs and targets), or on zeros of
/// `input_shape` without one (see [`probe`]).
fn build_torchscript(
    cfg: &ModelConfig,
    root: &nn::Path,
    task: Task,
    input_shape: &[i64],
    probe: Option<(&[Tensor], &Tensor)>,
) -> Result<Model, ModelError> {
    let path = cfg.torchscript.path.clone().expect("validated: torchscript has a path");
    if !path.is_file() {
        return Err(ModelError::TorchscriptMissing { path });
    }
    storages::check(&path).map_err(|e| match e {
        ArchiveError::NotTorchscript(_) => ModelError::NotTorchscript { path: path.clone(), reason: e.to_string() },
        damaged => ModelError::Torchscript { path: path.clone(), reason: damaged.to_string() },
    })?;
    match frozen_mode(&path) {
        Some(Frozen::Eval(op)) => tracing::warn!(
            path = %path.display(),
            "{op} runs in eval mode whatever the mode: the module was traced in eval mode \
             (torch.jit.trace bakes the mode in), so BatchNorm statistics stay frozen and dropout off \
             while training; export it with torch.jit.script"
        ),
        Some(Frozen::Train(op)) => tracing::warn!(
            path = %path.display(),
            "{op} runs in train mode whatever the mode: the module was traced in train mode, so \
             evaluation uses batch statistics and dropout; export it with torch.jit.script"
        ),
        None => {}
    }
    let failed = |e: ScriptError| ModelError::Torchscript { path: path.clone(), reason: e.0 };
    let mut module = ScriptModule::load(&path, root.device()).map_err(failed)?;
    let keys = state_dict_keys(&path);
    if keys.is_none() && !module.named_buffers().map_err(failed)?.is_empty() {
        // TorchScript keeps no trace of `persistent=False`: only the export can say.
        tracing::warn!(
            path = %path.display(),
            "the archive does not list its module's state_dict() keys, so every buffer is checkpointed, \
             non-persistent ones too (a strict load_state_dict in Python then reports them as unexpected); \
             export with torch.jit.save(m, path, _extra_files={{\"{STATE_DICT_KEYS}\": \"\\n\".join(model.state_dict())}}) \
             (README, Models and data)"
        );
    }
    register_tensors(&module, root, keys.as_deref()).map_err(failed)?;
    // A module is saved in whatever mode it was in (scripted, usually train); `Scripted`
    // starts from eval and switches per call.
    module.set_training(false).map_err(failed)?;
    let scripted = Scripted::new(module, &cfg.torchscript);
    let zeros;
    let (inputs, targets) = match probe {
        Some(batch) => batch,
        None => {
            zeros =
                zeros_batch(task, input_shape, root.device()).map_err(|e| failed(ScriptError(libtorch_message(&e))))?;
            (&zeros.0[..], &zeros.1)
        }
    };
    probe::run(&scripted, &path, task, inputs, targets)?;
    Ok(Box::new(scripted))
}

/// Two examples of zeros for `task` with inputs of `input_shape`, for a module tried
/// without the data.
fn zeros_batch(task: Task, input_shape: &[i64], device: tch::Device) -> Result<([Tensor; 1], Tensor), tch::TchError> {
    let inputs = [&[2], input_shape].concat();
    // A language model's targets are ids of the inputs' shape.
    let (input_kind, targets, target_kind) = match task {
        Task::Classification { .. } => (Kind::Float, vec![2], Kind::Int64),
        Task::Regression { outputs } => (Kind::Float, vec![2, outputs], Kind::Float),
        Task::LanguageModel { .. } => (Kind::Int64, inputs.clone(), Kind::Int64),
    };
    Ok(([Tensor::f_zeros(inputs, (input_kind, device))?], Tensor::f_zeros(targets, (target_kind, device))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(kind: ModelKind, task: Task, shape: &[i64], input: Tensor) -> Vec<String> {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let cfg = ModelConfig { kind, ..ModelConfig::default() };
        let model = build(&cfg, &vs.root(), task, shape, None).unwrap();
        let out = model.forward(&[input], None, false).logits;
        assert_eq!(out.size()[0], 2);
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        names
    }

    const TEN: Task = Task::Classification { classes: 10 };

    #[test]
    fn parameters_carry_pytorch_style_names() {
        let img = || Tensor::zeros([2, 1, 28, 28], tch::kind::FLOAT_CPU);
        assert_eq!(
            names(ModelKind::Mlp, TEN, &[1, 28, 28], img()),
            ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight", "out.bias", "out.weight"]
        );
        assert_eq!(
            names(ModelKind::Cnn, TEN, &[1, 28, 28], img()),
            [
                "conv1.bias",
                "conv1.weight",
                "conv2.bias",
                "conv2.weight",
                "fc1.bias",
                "fc1.weight",
                "out.bias",
                "out.weight"
            ]
        );
        let gpt = names(
            ModelKind::Gpt,
            Task::LanguageModel { vocab: 256 },
            &[64],
            Tensor::zeros([2, 64], (Kind::Int64, tch::Device::Cpu)),
        );
        assert!(
            gpt.contains(&"h.1.attn.c_attn.weight".to_string()) && gpt.contains(&"wte.weight".to_string()),
            "{gpt:?}"
        );
        assert!(!gpt.iter().any(|n| n.starts_with("lm_head")), "the output layer is tied to wte");
    }

    #[test]
    fn gpt_is_causal() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let cfg = ModelConfig { kind: ModelKind::Gpt, ..ModelConfig::default() };
        let model = build(&cfg, &vs.root(), Task::LanguageModel { vocab: 256 }, &[64], None).unwrap();
        let a = Tensor::randint(256, [1, 64], (Kind::Int64, tch::Device::Cpu));
        let b = a.copy();
        let _ = b.narrow(1, 40, 24).fill_(7);
        let (la, lb) = (model.forward(&[a], None, false).logits, model.forward(&[b], None, false).logits);
        // Positions before the change see the same prefix, so the same outputs.
        assert!(la.narrow(1, 0, 40).allclose(&lb.narrow(1, 0, 40), 1e-5, 1e-5, false));
        assert!(!la.narrow(1, 40, 24).allclose(&lb.narrow(1, 40, 24), 1e-5, 1e-5, false));
    }

    #[test]
    fn mismatched_models_and_data_are_refused() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let gpt = ModelConfig { kind: ModelKind::Gpt, ..ModelConfig::default() };
        assert!(build(&gpt, &vs.root(), TEN, &[1, 28, 28], None).unwrap_err().to_string().contains("data.kind text"));
        let cnn = ModelConfig { kind: ModelKind::Cnn, ..ModelConfig::default() };
        assert!(build(&cnn, &vs.root(), TEN, &[20], None).is_err());
    }
}

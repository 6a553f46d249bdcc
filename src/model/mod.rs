//! The models, built from `model:` into a [`tch::nn::VarStore`] for a data set's task.
//!
//! Parameter names are PyTorch's (`fc1.weight`, `h.0.attn.c_attn.weight`), so checkpoints
//! read like a `state_dict` in Python, TorchScript modules' included (each dot a level of
//! nesting in the `VarStore`).

use std::path::PathBuf;

use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

use crate::data::Task;
use config::{ModelConfig, ModelKind};

mod archive;
pub mod config;
mod nets;
mod probe;
pub mod script;
mod storages;

pub use archive::{frozen_mode, state_dict_keys, Frozen, STATE_DICT_KEYS};

use nets::{Cnn, Gpt, Mlp, Scripted};
use script::{ScriptError, ScriptModule};
use storages::ArchiveError;

/// How a failed TorchScript forward pass in training begins its panic message (the loop
/// catches it and reports libtorch's line: see [`crate::fault::catch_torch`]).
pub(crate) const FORWARD_FAILED: &str = "TorchScript forward failed";

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
struct Builtin<M>(M);

impl<M: ModuleT + Send + std::fmt::Debug> Network for Builtin<M> {
    fn forward(&self, inputs: &[Tensor], _targets: Option<&Tensor>, train: bool) -> Forward {
        Forward { logits: self.0.forward_t(&inputs[0], train), loss: None }
    }
}

/// A model the training loop can drive.
pub type Model = Box<dyn Network>;

/// Why a model cannot be built for a data set.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model does not fit the data set's task or input shape.
    #[error("model.kind {kind} cannot learn this data: {reason}")]
    Incompatible {
        /// The configured kind.
        kind: String,
        /// Why.
        reason: String,
    },
    /// `model.torchscript.path` names no file.
    #[error("model.torchscript.path {path} not found")]
    TorchscriptMissing {
        /// The file.
        path: PathBuf,
    },
    /// `model.torchscript.path` is a `torch.save` file, not a TorchScript module.
    #[error("model.torchscript.path {path}: {reason}")]
    NotTorchscript {
        /// The file.
        path: PathBuf,
        /// What it is, and what to do.
        reason: String,
    },
    /// A TorchScript file could not be loaded or run.
    #[error("cannot load TorchScript module {path}: {reason}")]
    Torchscript {
        /// The file.
        path: PathBuf,
        /// libtorch's message, on one line.
        reason: String,
    },
    /// The configured model would not fit in memory.
    #[error(
        "{key} = {value} makes a model of {parameters} parameters ({}) for inputs {input_shape:?} and {outputs} \
         outputs; training holds at least {} (weights and gradients), more than {}",
        human(parameters.saturating_mul(PARAMETER_BYTES)),
        human(parameters.saturating_mul(PARAMETER_BYTES * TRAINING_COPIES)),
        limit
    )]
    TooLarge {
        /// The key that sizes the model (`model.mlp.hidden`, `model.cnn`, `model.gpt`).
        key: &'static str,
        /// Its value, as written in YAML.
        value: String,
        /// The model's parameter count.
        parameters: u128,
        /// Shape of one input.
        input_shape: Vec<i64>,
        /// Outputs per example.
        outputs: i64,
        /// What it does not fit in: the memory available, or the absolute cap.
        limit: String,
    },
}

impl ModelError {
    /// Whether the configuration is at fault (exit code 2) rather than a file (1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::Incompatible { .. }
                | Self::TorchscriptMissing { .. }
                | Self::TooLarge { .. }
                | Self::NotTorchscript { .. }
        )
    }
}

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

/// Bytes per parameter: every model is built in float32.
const PARAMETER_BYTES: u128 = 4;
/// Copies of the parameters any training step holds: the weights and their gradients
/// (optimizer state comes on top; `train plan` accounts for it).
const TRAINING_COPIES: u128 = 2;
/// The most parameters a model may have whatever the memory probe says (2^40: 4 TiB of
/// float32, beyond any single machine). It also keeps every layer size within libtorch's
/// i64 dimensions, and applies where the probe has no figure.
pub const MAX_PARAMETERS: u128 = 1 << 40;

fn human(bytes: u128) -> String {
    bytesize::ByteSize(u64::try_from(bytes).unwrap_or(u64::MAX)).to_string()
}

/// libtorch's error as one line: the message without the C++ stack frames that follow
/// "Exception raised from", and for a TorchScript traceback its final `...Error: ...` line.
pub fn libtorch_message(e: &tch::TchError) -> String {
    let text = match e {
        tch::TchError::Torch(s) => s.clone(),
        other => other.to_string(),
    };
    script::one_line(&text)
}

/// Memory a model on `device` may use: the host's available memory on the CPU, the GPU's
/// free memory on CUDA (`None` when the probe cannot tell).
fn available_memory(device: tch::Device) -> Option<(u64, String)> {
    match device {
        tch::Device::Cuda(i) => {
            let free = crate::memory::probe::GpuProbe::memory(&crate::memory::probe::Nvml, i as u32).ok()?.free;
            Some((free, format!("the {} free on cuda:{i}", human(u128::from(free)))))
        }
        _ => {
            let host = crate::memory::probe::host();
            let available = host.available?;
            Some((available, format!("the {} of {} available", human(u128::from(available)), host.available_from())))
        }
    }
}

/// The parameter count of the configured model for `task` and inputs of `input_shape`,
/// computed without allocating, after checking that the shapes can make that model.
/// TorchScript modules bring their own parameters: `Ok(0)`.
pub fn parameter_count(cfg: &ModelConfig, task: Task, input_shape: &[i64]) -> Result<u128, ModelError> {
    let incompatible = |reason: String| ModelError::Incompatible { kind: kind_name(cfg.kind), reason };
    let outputs = outputs_of(task);
    if outputs < 1 {
        return Err(incompatible(format!("the data has {outputs} outputs per example")));
    }
    let linear = |i: u128, o: u128| i * o + o;
    let outputs = outputs as u128;
    let dims_ok = !input_shape.is_empty() && input_shape.iter().all(|&d| d >= 1);
    match (cfg.kind, task) {
        (ModelKind::Torchscript, _) => Ok(0),
        (ModelKind::Gpt, Task::LanguageModel { .. }) => {
            let g = &cfg.gpt;
            if input_shape != [i64::from(g.context)] {
                return Err(incompatible(format!(
                    "gpt needs windows of model.gpt.context bytes, these are {input_shape:?}"
                )));
            }
            let d = u128::from(g.width);
            let block = 2 * d + linear(d, 3 * d) + linear(d, d) + 2 * d + linear(d, 4 * d) + linear(4 * d, d);
            Ok(outputs * d + u128::from(g.context) * d + u128::from(g.depth) * block + 2 * d)
        }
        (ModelKind::Gpt, _) => Err(incompatible("gpt needs data.kind text".into())),
        (_, Task::LanguageModel { .. }) => Err(incompatible("text data needs model.kind gpt".into())),
        (_, _) if !dims_ok => Err(incompatible(format!("inputs of shape {input_shape:?} are empty"))),
        (ModelKind::Mlp, _) => {
            let inputs: u128 =
                input_shape.iter().map(|&d| d as u128).try_fold(1u128, |a, d| a.checked_mul(d)).unwrap_or(u128::MAX);
            let widths: Vec<u128> = std::iter::once(inputs)
                .chain(cfg.mlp.hidden.iter().map(|&h| u128::from(h)))
                .chain(std::iter::once(outputs))
                .collect();
            Ok(widths
                .windows(2)
                .fold(0u128, |sum, w| sum.saturating_add(w[0].saturating_mul(w[1]).saturating_add(w[1]))))
        }
        (ModelKind::Cnn, _) => match *input_shape {
            [c, h, w] if h >= 4 && w >= 4 => {
                let (c1, c2) = (u128::from(cfg.cnn.channels[0]), u128::from(cfg.cnn.channels[1]));
                let hidden = u128::from(cfg.cnn.hidden);
                let flat = c2.saturating_mul((h / 4) as u128).saturating_mul((w / 4) as u128);
                Ok(linear(c as u128 * 9, c1)
                    .saturating_add(linear(c1 * 9, c2))
                    .saturating_add(flat.saturating_mul(hidden).saturating_add(hidden))
                    .saturating_add(linear(hidden, outputs)))
            }
            [_, h, w] => Err(incompatible(format!(
                "cnn pools twice by 2, so it needs images of at least 4x4, these are {h}x{w}"
            ))),
            _ => Err(incompatible(format!("cnn needs [C, H, W] inputs, these are {input_shape:?}"))),
        },
    }
}

fn kind_name(kind: ModelKind) -> String {
    format!("{kind:?}").to_lowercase()
}

fn outputs_of(task: Task) -> i64 {
    match task {
        Task::Classification { classes } => classes,
        Task::Regression { outputs } => outputs,
        Task::LanguageModel { vocab } => vocab,
    }
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
        ArchiveError::Damaged(reason) => ModelError::Torchscript { path: path.clone(), reason },
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

#[cfg(test)]
mod tests {
    use super::config::ModelConfig;
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

//! The configuration schema: every section, every key, its type and its documented default.
//!
//! The structs deny unknown fields so that a typo is an error (with the nearest valid key,
//! see [`super::load`]) rather than a silently ignored setting. Sections are flat structs
//! rather than tagged enums so that layers can change `model.kind` without the keys of the
//! other kinds becoming "unknown".
//!
//! Longer than our ~450-line habit on purpose: it is the one page a reader looks up for any
//! key (type, default, meaning), one struct per section; validation lives in `validate`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use crate::distributed::config::{BackendChoice, DistributedConfig, Timeout};
pub use crate::memory::strategy::StrategyChoice;
pub use crate::schedule::{ScheduleConfig, ScheduleKind};
pub use bytesize::ByteSize;

/// The whole, validated configuration of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where and how the run executes.
    pub run: RunConfig,
    /// Which model to train and its size.
    pub model: ModelConfig,
    /// Where the data comes from.
    pub data: DataConfig,
    /// The optimisation loop.
    pub training: TrainingConfig,
    /// The seed guide's memory switches.
    pub memory: MemoryConfig,
    /// When checkpoints are written.
    pub checkpoint: CheckpointConfig,
    /// How the ranks of a data-parallel job talk to each other.
    pub distributed: DistributedConfig,
}

/// `run:` where and how the run executes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// `auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`.
    pub device: DeviceSpec,
    /// Output folder; `None` means `runs/<experiment>`.
    pub output_dir: Option<PathBuf>,
    /// `auto` (continue from the newest checkpoint of the run), `never`, or a checkpoint path.
    pub resume: ResumeSpec,
    /// libtorch intra-op threads; `None` leaves libtorch's default (one per core). At most
    /// [`MAX_THREADS_PER_CORE`] times the cores this process may use.
    pub threads: Option<u32>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self { device: DeviceSpec::Auto, output_dir: None, resume: ResumeSpec::Auto, threads: None }
    }
}

/// `model:` which model to train. Only the sub-section of the chosen kind is used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// The architecture.
    pub kind: ModelKind,
    /// Settings of the multi-layer perceptron.
    pub mlp: MlpConfig,
    /// Settings of the convolutional network.
    pub cnn: CnnConfig,
    /// Settings of the transformer language model.
    pub gpt: GptConfig,
    /// Settings of a TorchScript model.
    pub torchscript: TorchscriptConfig,
    /// Weights to start a fresh run from (fine-tuning): ours, safetensors (Hugging Face's
    /// included) or a `torch.save` state dict / `{'model_state_dict': ...}` file. Matching
    /// names and shapes are loaded, the rest reported; the optimizer starts fresh at step 0.
    /// Ignored when the run resumes (its checkpoints already descend from these weights).
    pub init_from: Option<PathBuf>,
    /// With `init_from`: refuse any difference (a name missing on either side, another
    /// shape) instead of reporting it.
    pub init_strict: bool,
    /// With `init_from`: the share of the model's tensors (0 to 1) the file must load, or
    /// the run is refused (exit 2) rather than trained from scratch by mistake. 0 loads
    /// whatever matches.
    pub init_min_loaded: f64,
    /// With `init_from`: renames the file's tensors before matching, each name's longest
    /// matching key replaced by its value (`{"": "bert."}` puts `bert.` before every name;
    /// `{"model.": ""}` removes it). A refusal for loading too little says which mapping
    /// would fit when the names differ by a constant prefix.
    pub init_prefix_map: std::collections::BTreeMap<String, String>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            kind: ModelKind::Mlp,
            mlp: MlpConfig::default(),
            cnn: CnnConfig::default(),
            gpt: GptConfig::default(),
            torchscript: TorchscriptConfig::default(),
            init_from: None,
            init_strict: false,
            init_min_loaded: 0.5,
            init_prefix_map: Default::default(),
        }
    }
}

/// The architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Fully connected layers with ReLU.
    Mlp,
    /// Two 3x3 convolutions with max pooling, then a fully connected head.
    Cnn,
    /// A decoder-only transformer language model over bytes.
    Gpt,
    /// A user's own model exported with `torch.jit.script` or `torch.jit.trace`.
    Torchscript,
}

/// `model.gpt:` a decoder-only transformer (pre-norm blocks of causal self-attention and
/// an MLP, learned positions, output layer tied to the token embedding).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GptConfig {
    /// Window length in bytes.
    pub context: u32,
    /// Embedding width.
    pub width: u32,
    /// Number of transformer blocks.
    pub depth: u32,
    /// Attention heads (must divide `width`).
    pub heads: u32,
}

impl Default for GptConfig {
    fn default() -> Self {
        Self { context: 64, width: 128, depth: 2, heads: 4 }
    }
}

/// `model.torchscript:`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TorchscriptConfig {
    /// The `.pt` file `torch.jit.save` wrote; its `forward` maps a batch of inputs to outputs.
    /// Loading it runs its code: treat it like a program, from a source you trust (README,
    /// "Models and data").
    pub path: Option<PathBuf>,
    /// Inputs passed to `forward` by keyword, each the data array of that name, with its
    /// integer or float kind kept (`[input_ids, attention_mask]`). Empty: one positional
    /// input, the array `x` as float32.
    pub inputs: Vec<String>,
    /// Also pass the targets, as this keyword (`labels`): a module that then returns its own
    /// loss (a tuple `(loss, logits, ...)` or a dict with `loss`, as Hugging Face models do)
    /// is trained on that loss.
    pub labels: Option<String>,
}

/// `model.mlp:`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Widths of the hidden layers, input side first.
    pub hidden: Vec<u32>,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self { hidden: vec![256, 128] }
    }
}

/// `model.cnn:`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CnnConfig {
    /// Output channels of the two convolutions.
    #[serde(deserialize_with = "exactly_n")]
    pub channels: [u32; 2],
    /// Width of the fully connected hidden layer.
    pub hidden: u32,
}

impl Default for CnnConfig {
    fn default() -> Self {
        Self { channels: [32, 64], hidden: 128 }
    }
}

/// `data:` where examples come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `idx` (image classification, MNIST layout), `text` (a file of bytes for `gpt`), or
    /// `tensors` (a safetensors file holding `x` and `y`).
    pub kind: DataKind,
    /// `idx`: folder holding `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
    /// `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each optionally `.gz`. The
    /// default is where Debian's `dataset-fashion-mnist` package puts Fashion-MNIST.
    pub dir: PathBuf,
    /// `text` and `tensors`: the file.
    pub path: Option<PathBuf>,
    /// `text` and `tensors`: the share of examples (the last ones) held out for validation.
    pub val_fraction: f64,
    /// Use only the first N training examples (quick runs); `None` uses all.
    pub train_limit: Option<u64>,
    /// Use only the first N validation examples; `None` uses all.
    pub val_limit: Option<u64>,
    /// `tensors` and `npz`: the array holding the targets (the inputs are `x`, or the
    /// arrays `model.torchscript.inputs` names).
    pub targets: String,
    /// `image_folder`: the `[height, width]` every image is resized to.
    pub image_size: [u32; 2],
    /// `image_folder`: 3 (RGB) or 1 (grayscale).
    pub channels: u32,
}

/// The data sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataKind {
    /// IDX files (Fashion-MNIST, MNIST); validation is the `t10k` split.
    Idx,
    /// A text file, modelled byte by byte.
    Text,
    /// A safetensors file with `x` and `y`.
    Tensors,
    /// A NumPy `.npz` archive (`numpy.savez`) of named arrays, read as `tensors` is.
    Npz,
    /// Images (PNG, JPEG) in torchvision's `ImageFolder` layout under `data.dir`: one
    /// subfolder per class, optionally inside `train/` and `val/` (or `test/`).
    ImageFolder,
}

/// Where Debian's `dataset-fashion-mnist` installs its files.
pub const DEFAULT_DATA_DIR: &str = "/usr/share/datasets/fashion-mnist";

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            kind: DataKind::Idx,
            dir: PathBuf::from(DEFAULT_DATA_DIR),
            path: None,
            val_fraction: 0.1,
            train_limit: None,
            val_limit: None,
            targets: "y".into(),
            image_size: [32, 32],
            channels: 3,
        }
    }
}

/// `training:` the optimisation loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// Total number of epochs of the run (a resumed run continues up to this count).
    pub epochs: u32,
    /// Examples per optimiser step.
    pub batch_size: u32,
    /// Seeds weight initialisation, the shuffling order and every random draw of a step.
    pub seed: u64,
    /// The optimiser and its hyper-parameters.
    pub optimizer: OptimizerConfig,
    /// The learning-rate schedule over optimiser steps.
    pub schedule: ScheduleConfig,
    /// Split each batch into this many micro-batches whose gradients are accumulated before
    /// one optimiser step: same update, a fraction of the activation memory.
    pub grad_accum_steps: u32,
    /// Clip the global gradient norm to this value before each step (`None`: no clipping).
    pub clip_grad_norm: Option<f64>,
    /// Log a progress line (and a `metrics.jsonl` step line) every N optimiser steps.
    pub log_every_n_steps: u64,
    /// `fp32`, or `bf16`: forward passes under CUDA autocast in bfloat16 (weights, gradients
    /// and optimizer state stay fp32). CUDA only.
    pub precision: Precision,
    /// Stop once this many optimiser steps have been taken in total (saving `latest` at the
    /// exact position, even mid-epoch); running again without it continues. `None`: no limit.
    pub max_steps: Option<u64>,
    /// What a step whose loss is NaN or infinite does (the update is not applied unless
    /// `continue`): `stop` the run (exit 3, `latest` left at the last finite state),
    /// `skip_step` (go on with the next batch), or `continue` (apply it anyway).
    pub on_nonfinite: OnNonfinite,
    /// End the run once the validation metric stops improving. `None`: train every epoch.
    pub early_stopping: Option<EarlyStopping>,
}

/// `training.early_stopping:` end the run when `metric` has not improved by more than
/// `min_delta` for `patience` epochs. The checkpoint of the best epoch is kept (retention's
/// `keep_best` follows the same metric).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EarlyStopping {
    /// `val_loss` (lower is better) or `val_accuracy` (higher is better).
    pub metric: StopMetric,
    /// Epochs without improvement before stopping (at least 1).
    pub patience: u32,
    /// The smallest change that counts as an improvement (>= 0).
    pub min_delta: f64,
}

impl Default for EarlyStopping {
    fn default() -> Self {
        Self { metric: StopMetric::ValLoss, patience: 3, min_delta: 0.0 }
    }
}

/// The metric early stopping and `keep_best` watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StopMetric {
    /// Validation loss; lower is better.
    #[default]
    ValLoss,
    /// Validation accuracy; higher is better.
    ValAccuracy,
}

/// `training.on_nonfinite`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNonfinite {
    /// End the run with exit code 3 and the step that diverged.
    Stop,
    /// Leave the weights as they were and go on with the next batch.
    SkipStep,
    /// Apply the update anyway (checkpoints are still never written with non-finite weights).
    Continue,
}

impl TrainingConfig {
    /// Optimiser steps in an epoch of `examples` training examples (the last batch may be short).
    pub fn batches_per_epoch(&self, examples: usize) -> u64 {
        examples.div_ceil(self.batch_size as usize) as u64
    }
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            epochs: 5,
            batch_size: 128,
            seed: 42,
            optimizer: OptimizerConfig::default(),
            schedule: ScheduleConfig::default(),
            grad_accum_steps: 1,
            clip_grad_norm: None,
            log_every_n_steps: 100,
            precision: Precision::Fp32,
            max_steps: None,
            on_nonfinite: OnNonfinite::Stop,
            early_stopping: None,
        }
    }
}

/// `training.optimizer:` the keys of every kind; each kind reads the ones it uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// `sgd`, `adam` or `adamw`.
    pub kind: OptimizerKind,
    /// Learning rate, in (0, [`MAX_LR`]].
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

/// Numeric precision of the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// float32 throughout.
    Fp32,
    /// bfloat16 autocast on CUDA.
    Bf16,
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

/// `memory:` the four switches of the seed guide, under the guide's names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Load checkpoints to host memory and move them to the device one tensor at a time,
    /// instead of materialising the whole checkpoint on the device first.
    pub checkpoint_memory_efficient: bool,
    /// Restore optimiser state on resume; `false` starts the optimiser fresh (momentum lost).
    pub load_optimizer_state: bool,
    /// Write checkpoints in the compressed format (`.tckpt`, see docs/compressed-format.md).
    pub compress_checkpoints: bool,
    /// Keep optimiser state in per-epoch checkpoints too (`latest` always has it).
    pub save_optimizer_in_epoch_checkpoints: bool,
    /// How to load a checkpoint: `auto` chooses from free memory and the checkpoint's sizes
    /// within what the two switches above allow; or `standard`, `memory_efficient`, `model_only`.
    pub strategy: StrategyChoice,
    /// Plan with this much free GPU memory instead of asking NVML (e.g. `6GiB`), for CI and
    /// for planning a run on another machine.
    pub assume_free_vram: Option<ByteSize>,
    /// Cap this process's GPU memory (e.g. `8GiB`), so a large GPU can stand in for a small
    /// one: libtorch's caching allocator gets that fraction of the device.
    pub vram_limit: Option<ByteSize>,
    /// Fraction of the free memory kept in reserve when choosing a strategy.
    pub safety_margin: f64,
}

/// The built-in defaults equal the `balanced` profile: safe on small GPUs, exact resume.
impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            checkpoint_memory_efficient: true,
            load_optimizer_state: true,
            compress_checkpoints: false,
            save_optimizer_in_epoch_checkpoints: false,
            strategy: StrategyChoice::Auto,
            assume_free_vram: None,
            vram_limit: None,
            safety_margin: 0.1,
        }
    }
}

/// `checkpoint:` when checkpoints are written and how many are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Write a per-epoch checkpoint every N epochs (the last epoch always gets one).
    /// `latest` is rewritten after every epoch regardless.
    pub every_n_epochs: u32,
    /// Keep only the newest N per-epoch checkpoints (`None` keeps all). Older ones are
    /// deleted only after the new `latest` has been written and verified.
    pub keep_last: Option<u32>,
    /// With `keep_last`, also keep the per-epoch checkpoint with the lowest validation loss.
    pub keep_best: bool,
    /// Write checkpoints on a background thread; training only waits for the snapshot.
    pub async_save: bool,
    /// Also rewrite `latest` every N optimiser steps inside an epoch (`None`: at epoch ends
    /// only). Resuming from such a checkpoint continues at the exact next batch.
    pub every_n_steps: Option<u64>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { every_n_epochs: 1, keep_last: None, keep_best: true, async_save: true, every_n_steps: None }
    }
}

/// `run.device`: which device to train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// CUDA device 0 when libtorch sees one, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("`{s}` is not a device: expected auto, cpu, cuda or cuda:N")),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

/// `run.resume`: where a run continues from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ResumeSpec {
    /// The newest loadable checkpoint in the run's folder, or a fresh start when there is none.
    Auto,
    /// Always a fresh start; refuses to run over an earlier run's checkpoints.
    Never,
    /// This checkpoint file.
    Path(PathBuf),
}

impl From<String> for ResumeSpec {
    fn from(s: String) -> Self {
        match s.as_str() {
            "auto" => Self::Auto,
            "never" => Self::Never,
            _ => Self::Path(PathBuf::from(s)),
        }
    }
}

impl From<ResumeSpec> for String {
    fn from(r: ResumeSpec) -> String {
        match r {
            ResumeSpec::Auto => "auto".into(),
            ResumeSpec::Never => "never".into(),
            ResumeSpec::Path(p) => p.display().to_string(),
        }
    }
}

/// Deserializes a fixed-size array from a sequence of exactly `N` values. serde's own
/// array impl stops reading after `N` and figment does not complain about the rest, so
/// `betas: [0.9, 0.99, 0.5]` was silently cut to two values.
fn exactly_n<'de, D, T, const N: usize>(deserializer: D) -> Result<[T; N], D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let values = Vec::<T>::deserialize(deserializer)?;
    let len = values.len();
    values.try_into().map_err(|_| serde::de::Error::invalid_length(len, &format!("exactly {N} values").as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_spec_parses_every_form_and_rejects_others() {
        assert_eq!("auto".parse(), Ok(DeviceSpec::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        assert!("gpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }
}

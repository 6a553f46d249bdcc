//! `model:` which model to train, and the fine-tuning keys (`init_from` and its kin).
//! See `config::schema` for how the sections compose; every section denies unknown keys.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::serde_exact::exactly_n;

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
    /// Vocabulary size. `None`: 256 for `text` data (bytes), and for `tokens` data the
    /// largest token + 1, found by one scan of the file at start.
    pub vocab: Option<u32>,
}

impl Default for GptConfig {
    fn default() -> Self {
        Self { context: 64, width: 128, depth: 2, heads: 4, vocab: None }
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

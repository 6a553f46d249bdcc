//! The models, built from `model:` into a [`tch::nn::VarStore`] for a data set's task.
//!
//! Parameter names are PyTorch's (`fc1.weight`, `h.0.attn.c_attn.weight`), so checkpoints
//! read like a `state_dict` in Python. TorchScript modules keep their own names with `.`
//! replaced by `_` (a `VarStore` reserves `.` for nesting).

use std::path::PathBuf;
use std::sync::Mutex;

use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

use crate::config::{ModelConfig, ModelKind};
use crate::data::Task;

/// A model the training loop can drive: a function of a batch, with its parameters held in
/// the `VarStore` it was built in.
pub type Model = Box<dyn ModuleT + Send>;

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
    /// A TorchScript file could not be loaded.
    #[error("cannot load TorchScript module {path}: {source}")]
    Torchscript {
        /// The file.
        path: PathBuf,
        /// libtorch's error.
        source: tch::TchError,
    },
}

/// Builds the configured model for `task` with inputs of `input_shape` (one example).
pub fn build(cfg: &ModelConfig, root: &nn::Path, task: Task, input_shape: &[i64]) -> Result<Model, ModelError> {
    let incompatible = |reason: &str| ModelError::Incompatible {
        kind: format!("{:?}", cfg.kind).to_lowercase(),
        reason: reason.to_string(),
    };
    let outputs = match task {
        Task::Classification { classes } => classes,
        Task::Regression { outputs } => outputs,
        Task::LanguageModel { vocab } => vocab,
    };
    match (cfg.kind, task) {
        (ModelKind::Gpt, Task::LanguageModel { vocab }) => Ok(Box::new(Gpt::new(root, &cfg.gpt, vocab))),
        (ModelKind::Gpt, _) => Err(incompatible("gpt needs data.kind text")),
        (ModelKind::Torchscript, _) => {
            let path = cfg.torchscript.path.clone().expect("validated: torchscript has a path");
            let module = tch::TrainableCModule::load(&path, root.clone())
                .map_err(|source| ModelError::Torchscript { path: path.clone(), source })?;
            // Try it on two zero examples now, so a module that does not fit the data fails
            // here with a clear error instead of in the middle of training.
            let kind = if matches!(task, Task::LanguageModel { .. }) { Kind::Int64 } else { Kind::Float };
            let probe = Tensor::zeros([&[2], input_shape].concat(), (kind, root.device()));
            let out = tch::no_grad(|| module.forward_ts(&[probe]))
                .map_err(|source| ModelError::Torchscript { path: path.clone(), source })?;
            if out.size().first() != Some(&2) || out.size().last() != Some(&outputs) {
                return Err(incompatible(&format!(
                    "{} maps inputs {input_shape:?} to {:?}; the data needs [N, {outputs}]",
                    path.display(),
                    &out.size()[1..]
                )));
            }
            Ok(Box::new(Scripted { module: Mutex::new((module, true)) }))
        }
        (_, Task::LanguageModel { .. }) => Err(incompatible("text data needs model.kind gpt")),
        (ModelKind::Mlp, _) => Ok(Box::new(Mlp::new(root, input_shape.iter().product(), &cfg.mlp.hidden, outputs))),
        (ModelKind::Cnn, _) => match *input_shape {
            [c, h, w] => Ok(Box::new(Cnn::new(root, [c, h, w], cfg.cnn.channels, cfg.cnn.hidden, outputs))),
            _ => Err(incompatible(&format!("cnn needs [C, H, W] inputs, these are {input_shape:?}"))),
        },
    }
}

/// Fully connected layers with ReLU between them: `fc1`, `fc2`, ..., `out`.
#[derive(Debug)]
struct Mlp {
    layers: Vec<nn::Linear>,
}

impl Mlp {
    fn new(root: &nn::Path, inputs: i64, hidden: &[u32], outputs: i64) -> Self {
        let mut layers = Vec::with_capacity(hidden.len() + 1);
        let mut width = inputs;
        for (i, &h) in hidden.iter().enumerate() {
            layers.push(nn::linear(root / format!("fc{}", i + 1), width, h.into(), Default::default()));
            width = h.into();
        }
        layers.push(nn::linear(root / "out", width, outputs, Default::default()));
        Self { layers }
    }
}

impl ModuleT for Mlp {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        let (last, hidden) = self.layers.split_last().expect("an MLP has an output layer");
        let h = hidden.iter().fold(xs.flatten(1, -1), |h, layer| h.apply(layer).relu());
        h.apply(last)
    }
}

/// Two 3x3 convolutions (padding 1), each followed by ReLU and 2x2 max pooling, then a
/// hidden fully connected layer and the output layer: `conv1`, `conv2`, `fc1`, `out`.
#[derive(Debug)]
struct Cnn {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    fc1: nn::Linear,
    out: nn::Linear,
}

impl Cnn {
    fn new(root: &nn::Path, [c, h, w]: [i64; 3], channels: [u32; 2], hidden: u32, outputs: i64) -> Self {
        let conv = nn::ConvConfig { padding: 1, ..Default::default() };
        let (c1, c2) = (i64::from(channels[0]), i64::from(channels[1]));
        let flat = c2 * (h / 4) * (w / 4);
        Self {
            conv1: nn::conv2d(root / "conv1", c, c1, 3, conv),
            conv2: nn::conv2d(root / "conv2", c1, c2, 3, conv),
            fc1: nn::linear(root / "fc1", flat, hidden.into(), Default::default()),
            out: nn::linear(root / "out", hidden.into(), outputs, Default::default()),
        }
    }
}

impl ModuleT for Cnn {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        xs.apply(&self.conv1)
            .relu()
            .max_pool2d_default(2)
            .apply(&self.conv2)
            .relu()
            .max_pool2d_default(2)
            .flatten(1, -1)
            .apply(&self.fc1)
            .relu()
            .apply(&self.out)
    }
}

/// A GPT-2-style decoder over bytes: `wte`, `wpe`, blocks `h.N` (`ln_1`, `attn.c_attn`,
/// `attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`), `ln_f`; the output layer is `wte`
/// itself (weight tying), as in GPT-2.
#[derive(Debug)]
struct Gpt {
    wte: nn::Embedding,
    wpe: nn::Embedding,
    blocks: Vec<Block>,
    ln_f: nn::LayerNorm,
    heads: i64,
}

#[derive(Debug)]
struct Block {
    ln_1: nn::LayerNorm,
    c_attn: nn::Linear,
    attn_proj: nn::Linear,
    ln_2: nn::LayerNorm,
    c_fc: nn::Linear,
    mlp_proj: nn::Linear,
}

impl Gpt {
    fn new(root: &nn::Path, cfg: &crate::config::GptConfig, vocab: i64) -> Self {
        let d = i64::from(cfg.width);
        let emb = nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 }, ..Default::default() };
        let blocks = (0..cfg.depth)
            .map(|i| {
                let b = root / "h" / i;
                Block {
                    ln_1: nn::layer_norm(&b / "ln_1", vec![d], Default::default()),
                    c_attn: nn::linear(&b / "attn" / "c_attn", d, 3 * d, Default::default()),
                    attn_proj: nn::linear(&b / "attn" / "c_proj", d, d, Default::default()),
                    ln_2: nn::layer_norm(&b / "ln_2", vec![d], Default::default()),
                    c_fc: nn::linear(&b / "mlp" / "c_fc", d, 4 * d, Default::default()),
                    mlp_proj: nn::linear(&b / "mlp" / "c_proj", 4 * d, d, Default::default()),
                }
            })
            .collect();
        Self {
            wte: nn::embedding(root / "wte", vocab, d, emb),
            wpe: nn::embedding(root / "wpe", i64::from(cfg.context), d, emb),
            blocks,
            ln_f: nn::layer_norm(root / "ln_f", vec![d], Default::default()),
            heads: i64::from(cfg.heads),
        }
    }
}

impl ModuleT for Gpt {
    fn forward_t(&self, tokens: &Tensor, _train: bool) -> Tensor {
        let (b, t) = tokens.size2().expect("token windows are [B, T]");
        let positions = Tensor::arange(t, (Kind::Int64, tokens.device()));
        let mut x = tokens.apply(&self.wte) + positions.apply(&self.wpe);
        let d = x.size()[2];
        let hd = d / self.heads;
        for blk in &self.blocks {
            let qkv = x.apply(&blk.ln_1).apply(&blk.c_attn);
            let split = |i: i64| qkv.narrow(2, i * d, d).view([b, t, self.heads, hd]).transpose(1, 2);
            let y = Tensor::scaled_dot_product_attention(
                &split(0),
                &split(1),
                &split(2),
                None::<Tensor>,
                0.0,
                true,
                None,
                false,
            );
            x = &x + y.transpose(1, 2).contiguous().view([b, t, d]).apply(&blk.attn_proj);
            x = &x + x.apply(&blk.ln_2).apply(&blk.c_fc).gelu("none").apply(&blk.mlp_proj);
        }
        // Tied output layer: logits = h · wteᵀ.
        x.apply(&self.ln_f).matmul(&self.wte.ws.tr())
    }
}

/// A TorchScript module; remembers its train/eval mode to switch only when it changes.
struct Scripted {
    module: Mutex<(tch::TrainableCModule, bool)>,
}

impl std::fmt::Debug for Scripted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scripted")
    }
}

impl ModuleT for Scripted {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut guard = self.module.lock().expect("no panic while holding the module");
        let (module, mode) = &mut *guard;
        if *mode != train {
            if train {
                module.set_train();
            } else {
                module.set_eval();
            }
            *mode = train;
        }
        // `build` ran the module once on a batch of this shape, so a failure here is libtorch's
        // own (out of memory, say), which the loop cannot continue from.
        module.forward_ts(&[xs]).unwrap_or_else(|e| panic!("TorchScript forward failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    fn names(kind: ModelKind, task: Task, shape: &[i64], input: Tensor) -> Vec<String> {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let cfg = ModelConfig { kind, ..ModelConfig::default() };
        let model = build(&cfg, &vs.root(), task, shape).unwrap();
        let out = model.forward_t(&input, false);
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
        let model = build(&cfg, &vs.root(), Task::LanguageModel { vocab: 256 }, &[64]).unwrap();
        let a = Tensor::randint(256, [1, 64], (Kind::Int64, tch::Device::Cpu));
        let b = a.copy();
        let _ = b.narrow(1, 40, 24).fill_(7);
        let (la, lb) = (model.forward_t(&a, false), model.forward_t(&b, false));
        // Positions before the change see the same prefix, so the same outputs.
        assert!(la.narrow(1, 0, 40).allclose(&lb.narrow(1, 0, 40), 1e-5, 1e-5, false));
        assert!(!la.narrow(1, 40, 24).allclose(&lb.narrow(1, 40, 24), 1e-5, 1e-5, false));
    }

    #[test]
    fn mismatched_models_and_data_are_refused() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let gpt = ModelConfig { kind: ModelKind::Gpt, ..ModelConfig::default() };
        assert!(build(&gpt, &vs.root(), TEN, &[1, 28, 28]).unwrap_err().to_string().contains("data.kind text"));
        let cnn = ModelConfig { kind: ModelKind::Cnn, ..ModelConfig::default() };
        assert!(build(&cnn, &vs.root(), TEN, &[20]).is_err());
    }
}

//! The built-in networks (MLP, CNN, a GPT-style decoder) and the TorchScript wrapper, each
//! a [`ModuleT`] over parameters in a `VarStore`, named as PyTorch names them.

use std::sync::Mutex;

use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

use super::network::{Forward, Network};
use super::script::{Input, Output, ScriptError, ScriptModule};

/// Fully connected layers with ReLU between them: `fc1`, `fc2`, ..., `out`.
#[derive(Debug)]
pub(super) struct Mlp {
    layers: Vec<nn::Linear>,
}

impl Mlp {
    pub(super) fn new(root: &nn::Path, inputs: i64, hidden: &[u32], outputs: i64) -> Self {
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
pub(super) struct Cnn {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    fc1: nn::Linear,
    out: nn::Linear,
}

impl Cnn {
    pub(super) fn new(root: &nn::Path, [c, h, w]: [i64; 3], channels: [u32; 2], hidden: u32, outputs: i64) -> Self {
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
pub(super) struct Gpt {
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
    pub(super) fn new(root: &nn::Path, cfg: &super::config::GptConfig, vocab: i64) -> Self {
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

/// A TorchScript module: its inputs passed by position (one) or by the keywords
/// `model.torchscript.inputs` names, the targets as the `labels` keyword when configured.
pub(super) struct Scripted {
    /// The module and the mode it is in (true: training).
    module: Mutex<(ScriptModule, bool)>,
    /// Keywords of the inputs, in the data's order; empty: one positional input.
    inputs: Vec<String>,
    /// Keyword of the targets, when the module takes them.
    labels: Option<String>,
}

impl std::fmt::Debug for Scripted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scripted")
    }
}

impl Scripted {
    /// Wraps `module` (in eval mode) for the contract `cfg` configures.
    pub(super) fn new(module: ScriptModule, cfg: &super::config::TorchscriptConfig) -> Self {
        Self { module: Mutex::new((module, false)), inputs: cfg.inputs.clone(), labels: cfg.labels.clone() }
    }

    /// One forward pass in train (`train`) or eval mode, switching the module's mode first
    /// when it differs.
    pub(super) fn try_forward(
        &self,
        inputs: &[Tensor],
        targets: Option<&Tensor>,
        train: bool,
    ) -> Result<Output, ScriptError> {
        let mut guard = self.module.lock().expect("no panic while holding the module");
        let (module, mode) = &mut *guard;
        if *mode != train {
            module.set_training(train)?;
            *mode = train;
        }
        let mut args: Vec<Input<'_>> = inputs
            .iter()
            .enumerate()
            .map(|(i, tensor)| Input { name: self.inputs.get(i).map(String::as_str), tensor })
            .collect();
        let labels = match (&self.labels, targets) {
            (Some(name), Some(t)) => {
                args.push(Input { name: Some(name), tensor: t });
                true
            }
            _ => false,
        };
        module.forward(&args, labels)
    }
}

/// Tensors by dotted name.
pub(super) type Named = Vec<(String, Tensor)>;

impl Scripted {
    /// The module's parameters and buffers by dotted name, as it holds them now.
    pub(super) fn tensors(&self) -> Result<(Named, Named), ScriptError> {
        let guard = self.module.lock().expect("no panic while holding the module");
        Ok((guard.0.named_parameters()?, guard.0.named_buffers()?))
    }
}

impl Network for Scripted {
    fn forward(&self, inputs: &[Tensor], targets: Option<&Tensor>, train: bool) -> Forward {
        // `build` ran the module once on examples of this data, so a failure here is
        // libtorch's own (out of memory, say), which the loop cannot continue from.
        let out = self
            .try_forward(inputs, targets, train)
            .unwrap_or_else(|e| panic!("{}: {e}", crate::fault::FORWARD_FAILED));
        Forward { logits: out.logits, loss: out.loss }
    }
}

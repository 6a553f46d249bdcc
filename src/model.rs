//! The built-in models, built from `model:` into a [`tch::nn::VarStore`].
//!
//! Parameter names are PyTorch's (`fc1.weight`, `conv2.bias`), so checkpoints read like a
//! `state_dict` in Python.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use crate::config::{ModelConfig, ModelKind};

/// A model the training loop can drive: a function of a batch, with its parameters held in
/// the `VarStore` it was built in.
pub type Model = Box<dyn ModuleT + Send>;

/// Builds the configured model for images of `image_shape` (`[C, H, W]`) and `classes` outputs.
pub fn build(cfg: &ModelConfig, root: &nn::Path, image_shape: [i64; 3], classes: i64) -> Model {
    match cfg.kind {
        ModelKind::Mlp => Box::new(Mlp::new(root, image_shape.iter().product(), &cfg.mlp.hidden, classes)),
        ModelKind::Cnn => Box::new(Cnn::new(root, image_shape, cfg.cnn.channels, cfg.cnn.hidden, classes)),
    }
}

/// Fully connected layers with ReLU between them: `fc1`, `fc2`, ..., `out`.
#[derive(Debug)]
struct Mlp {
    layers: Vec<nn::Linear>,
}

impl Mlp {
    fn new(root: &nn::Path, inputs: i64, hidden: &[u32], classes: i64) -> Self {
        let mut layers = Vec::with_capacity(hidden.len() + 1);
        let mut width = inputs;
        for (i, &h) in hidden.iter().enumerate() {
            layers.push(nn::linear(root / format!("fc{}", i + 1), width, h.into(), Default::default()));
            width = h.into();
        }
        layers.push(nn::linear(root / "out", width, classes, Default::default()));
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
    fn new(root: &nn::Path, [c, h, w]: [i64; 3], channels: [u32; 2], hidden: u32, classes: i64) -> Self {
        let conv = nn::ConvConfig { padding: 1, ..Default::default() };
        let (c1, c2) = (i64::from(channels[0]), i64::from(channels[1]));
        let flat = c2 * (h / 4) * (w / 4);
        Self {
            conv1: nn::conv2d(root / "conv1", c, c1, 3, conv),
            conv2: nn::conv2d(root / "conv2", c1, c2, 3, conv),
            fc1: nn::linear(root / "fc1", flat, hidden.into(), Default::default()),
            out: nn::linear(root / "out", hidden.into(), classes, Default::default()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    fn names(kind: ModelKind) -> Vec<String> {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let cfg = ModelConfig { kind, ..ModelConfig::default() };
        let model = build(&cfg, &vs.root(), [1, 28, 28], 10);
        let out = model.forward_t(&Tensor::zeros([2, 1, 28, 28], tch::kind::FLOAT_CPU), false);
        assert_eq!(out.size(), vec![2, 10]);
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        names
    }

    #[test]
    fn parameters_carry_pytorch_style_names() {
        assert_eq!(
            names(ModelKind::Mlp),
            ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight", "out.bias", "out.weight"]
        );
        assert_eq!(
            names(ModelKind::Cnn),
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
    }
}

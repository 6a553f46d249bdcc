//! `data:` where the examples come from.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::transforms::TransformsConfig;

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
    /// `image_folder`: the augmentations of training and evaluation images, as torchvision's
    /// `transforms.v2` names them (see [`crate::data::transforms`]).
    pub transforms: TransformsConfig,
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
            transforms: TransformsConfig::default(),
        }
    }
}

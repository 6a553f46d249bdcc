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
    /// `image_folder` and `webdataset`: the augmentations of training and evaluation images,
    /// as torchvision's `transforms.v2` names them (see [`crate::data::transforms`]).
    pub transforms: TransformsConfig,
    /// `tokens`: the width of each token in the file, `uint16` or `uint32` (nanoGPT and
    /// Megatron write `uint16` for vocabularies up to 65,536).
    pub dtype: TokenDtype,
    /// Threads that read (and decode) the examples of each batch of a streamed kind. `None`:
    /// the cores `run.threads` leaves free, at least one.
    pub workers: Option<usize>,
    /// Batches assembled ahead of the training step. Host memory for batches is at most
    /// this many plus the two in use, whatever the data set's size.
    pub prefetch_batches: usize,
    /// A streamed example that cannot be read (a corrupt image, a bad token): `error` stops
    /// the run naming the file and the example; `skip` leaves it out of its batch, logged and
    /// counted in `metrics.jsonl`.
    pub on_bad_sample: OnBadSample,
}

/// `data.on_bad_sample`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadSample {
    /// Stop the run, naming the file and the example.
    Error,
    /// Leave the example out, logged and counted.
    Skip,
}

/// `data.dtype`: how wide a token is in a `tokens` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenDtype {
    /// Two bytes, little-endian.
    Uint16,
    /// Four bytes, little-endian.
    Uint32,
}

impl TokenDtype {
    /// Bytes per token.
    pub fn bytes(self) -> usize {
        match self {
            TokenDtype::Uint16 => 2,
            TokenDtype::Uint32 => 4,
        }
    }
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
    /// A flat file of tokens (`data.dtype`), as nanoGPT's and Megatron's `.bin` files: read
    /// window by window as batches need them, never whole.
    Tokens,
    /// A folder (`data.path`) of `.npy` files, one per array (`x.npy`, `y.npy`), read row by
    /// row as batches need them.
    Npy,
    /// WebDataset tar shards (`data.path`: a folder or a brace pattern) of `key.jpg|png`
    /// images with `key.cls` classes, indexed at start, read as batches need them.
    Webdataset,
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
            dtype: TokenDtype::Uint16,
            workers: None,
            prefetch_batches: super::prefetch::PREFETCH_DEPTH,
            on_bad_sample: OnBadSample::Error,
        }
    }
}

//! Loading the configured data set: each kind's loader, and the two read here (IDX files
//! and a text file as byte windows).

use std::path::Path;

use tch::{Kind, Tensor};

use super::config::{DataConfig, DataKind};
use super::dataset::{Dataset, Task, BYTE_VOCAB};
use super::error::DataError;
use super::source::{check_host_memory, read_error, required_path, split_tail, val_count};
use super::split::Split;
use super::{idx, image_folder, npy, tensors, tokens, webdataset};

impl Dataset {
    /// Loads the data set `cfg` describes. `context` is the window length of text and token
    /// data, `vocab` their vocabulary when configured (`model.gpt.vocab`); `inputs` the
    /// arrays a TorchScript module takes by name (`model.torchscript.inputs`; empty: the one
    /// input `x`), read from `tensors` and `npz` data.
    pub fn load(cfg: &DataConfig, context: usize, vocab: Option<u32>, inputs: &[String]) -> Result<Self, DataError> {
        let ds = match cfg.kind {
            DataKind::Idx => load_idx(cfg)?,
            DataKind::Text => load_text(cfg, context, vocab)?,
            DataKind::Tokens => tokens::load(cfg, context, vocab)?,
            DataKind::Npy => npy::load(cfg, inputs)?,
            DataKind::Webdataset => webdataset::load(cfg)?,
            DataKind::Tensors | DataKind::Npz => tensors::load(cfg, inputs)?,
            DataKind::ImageFolder => image_folder::load(cfg)?,
        };
        Ok(Self { train: ds.train.head(cfg.train_limit), val: ds.val.head(cfg.val_limit), ..ds })
    }
}

fn load_idx(cfg: &DataConfig) -> Result<Dataset, DataError> {
    let (train, train_shape, train_classes) = load_idx_split(&cfg.dir, "train")?;
    let (val, val_shape, val_classes) = load_idx_split(&cfg.dir, "t10k")?;
    if train_shape != val_shape {
        return Err(DataError::Mismatch {
            split: "t10k",
            dir: cfg.dir.clone(),
            reason: format!("images are {val_shape:?}, the train split's are {train_shape:?}"),
        });
    }
    Ok(Dataset {
        train,
        val,
        task: Task::Classification { classes: train_classes.max(val_classes) },
        input_shape: vec![1, train_shape[0], train_shape[1]],
    })
}

/// One split: `[N, 1, H, W]` float images in [0, 1], `[N]` labels, `[H, W]` and the number
/// of classes its labels imply. Refuses empty splits and empty images before any tensor is
/// made (libtorch fails on them deep inside the model).
fn load_idx_split(dir: &Path, split: &'static str) -> Result<(Split, [i64; 2], i64), DataError> {
    let images = idx::read_idx(dir, &format!("{split}-images-idx3-ubyte"))?;
    let labels = idx::read_idx(dir, &format!("{split}-labels-idx1-ubyte"))?;
    let mismatch = |reason: String| DataError::Mismatch { split, dir: dir.to_path_buf(), reason };
    if images.dims.len() != 3 || labels.dims.len() != 1 {
        return Err(mismatch(format!(
            "expected [N, H, W] images and [N] labels, found {:?} and {:?}",
            images.dims, labels.dims
        )));
    }
    if images.dims[0] != labels.dims[0] {
        return Err(mismatch(format!("{} images but {} labels", images.dims[0], labels.dims[0])));
    }
    if images.dims[0] == 0 {
        return Err(mismatch("it holds no examples".into()));
    }
    if images.dims[1] == 0 || images.dims[2] == 0 {
        return Err(mismatch(format!("its images are {}x{} pixels", images.dims[1], images.dims[2])));
    }
    // IDX sizes are u32, so these fit an i64; labels are bytes, so at most 256 classes.
    let n = images.dims[0] as i64;
    let (h, w) = (images.dims[1] as i64, images.dims[2] as i64);
    let classes = i64::from(*labels.data.iter().max().expect("checked: at least one label")) + 1;
    let x = Tensor::from_slice(&images.data).view([n, 1, h, w]).to_kind(Kind::Float) / 255.0;
    let y = Tensor::from_slice(&labels.data).to_kind(Kind::Int64);
    Ok((Split::in_memory(vec![x], y), [h, w], classes))
}

/// A text file as non-overlapping windows of `context` bytes; each window's targets are the
/// same bytes shifted by one. The last `val_fraction` of the windows are the validation split.
/// The vocabulary is the 256 byte values, or `vocab` when larger (validation refuses less).
fn load_text(cfg: &DataConfig, context: usize, vocab: Option<u32>) -> Result<Dataset, DataError> {
    let path = required_path(cfg)?;
    if context == 0 {
        return Err(DataError::Config("model.gpt.context must be at least 1".into()));
    }
    let bytes = std::fs::read(path).map_err(|source| read_error("data.path", path, source))?;
    // Every byte becomes an int64 token.
    check_host_memory(path, (bytes.len() as u64).saturating_mul(8))?;
    let windows = bytes.len().saturating_sub(1) / context;
    let val = val_count(windows, cfg.val_fraction, path)?;
    let tokens = Tensor::from_slice(&bytes[..windows * context + 1]).to_kind(Kind::Int64);
    let inputs = tokens.narrow(0, 0, (windows * context) as i64).view([windows as i64, context as i64]);
    let targets = tokens.narrow(0, 1, (windows * context) as i64).view([windows as i64, context as i64]);
    let (train, val) = split_tail(vec![inputs], targets, val);
    let vocab = vocab.map_or(BYTE_VOCAB, |v| i64::from(v).max(BYTE_VOCAB));
    Ok(Dataset { train, val, task: Task::LanguageModel { vocab }, input_shape: vec![context as i64] })
}

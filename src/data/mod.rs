//! Data: a data set held in memory (IDX images, a text file as byte windows, or a
//! safetensors file of `x`/`y`), its seeded batch order, and batches assembled ahead.
//!
//! The order of an epoch is a pure function of (seed, epoch), so a resumed run visits the
//! examples in exactly the order an uninterrupted one would, with no sampler state to save.

pub mod config;
mod files;
pub mod idx;
mod image_folder;
mod prefetch;
mod tensors;

pub use files::check_files;
pub use prefetch::Prefetcher;

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Device, Kind, Tensor};

use config::{DataConfig, DataKind};

/// Failures to load a data set; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file of the data set is not there.
    #[error("data file {path} not found (data.dir is {dir}; on Debian: apt-get install dataset-fashion-mnist, or --set data.dir=FOLDER)")]
    Missing {
        /// The file looked for.
        path: PathBuf,
        /// The configured folder.
        dir: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read data file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not a well-formed IDX file.
    #[error("data file {path} is malformed: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file a configuration key names is not there.
    #[error("{key} {path} not found")]
    NotFound {
        /// The key naming the file (`data.path`).
        key: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// Loading the data set would need more host memory than there is.
    #[error("data file {path} needs {} of host memory once loaded, more than the {} of {from} available", bytesize::ByteSize(*needed), bytesize::ByteSize(*available))]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Bytes it would take.
        needed: u64,
        /// Bytes available (`MemAvailable`, or the memory cgroup's headroom when smaller).
        available: u64,
        /// Where `available` comes from ([`crate::memory::probe::HostMemory::available_from`]).
        from: String,
    },
    /// A data file that reads but cannot be used: sizes that overflow or exceed what the
    /// file holds, non-finite values, an image too large to decode in the memory there is.
    #[error("data file {path} cannot be used: {reason}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the array or image.
        reason: String,
    },
    /// The data section of the configuration is incomplete.
    #[error("{0}")]
    Config(String),
    /// Images and labels disagree.
    #[error("{split} split of {dir} is inconsistent: {reason}")]
    Mismatch {
        /// `train` or `t10k`.
        split: &'static str,
        /// The data folder.
        dir: PathBuf,
        /// What disagrees.
        reason: String,
    },
}

impl DataError {
    /// Whether the configuration is at fault (a file it names is missing) or the data can
    /// never work as it is ([`DataError::Unusable`]), so the exit code is the usage one (2),
    /// rather than the data's (1).
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Missing { .. } | Self::NotFound { .. } | Self::Config(_) | Self::Unusable { .. })
    }
}

/// The most classes a classification data set may have. The output layer has one row per
/// class, so a stray label such as 2^40 would otherwise ask for terabytes; the largest
/// label sets in use (ImageNet-21k: 21,841; extreme classification: a few million) stay
/// well below 2^24.
pub const MAX_CLASSES: i64 = 1 << 24;

/// A batch: the model's inputs (see [`Split::inputs`]) and the targets.
pub type Batch = (Vec<Tensor>, Tensor);

/// One split of a data set, on the host.
#[derive(Debug)]
pub struct Split {
    /// `[N, ...]` model inputs: float images, int64 token windows, or float features; several
    /// for a TorchScript module that takes named inputs (`model.torchscript.inputs`), in
    /// that order.
    pub inputs: Vec<Tensor>,
    /// `[N, ...]` targets: int64 classes, int64 next tokens, or float values.
    pub targets: Tensor,
}

impl Split {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.targets.size()[0] as usize
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples at `indices`, moved to `device`.
    ///
    /// Rows are gathered with plain memory copies rather than `index_select`: run on the
    /// prefetch thread, a libtorch parallel op would start a second OpenMP team, whose
    /// spinning threads slow every training step (measured: 0.47x PyTorch's speed on the
    /// default MLP with `index_select`; see bench/README.md).
    pub fn batch(&self, indices: &[i64], device: Device) -> Batch {
        let inputs = self.inputs.iter().map(|t| gather_rows(t, indices).to_device(device)).collect();
        (inputs, gather_rows(&self.targets, indices).to_device(device))
    }

    fn shallow_clone(&self) -> Self {
        Self { inputs: self.inputs.iter().map(Tensor::shallow_clone).collect(), targets: self.targets.shallow_clone() }
    }

    /// Examples `start .. start + len`.
    fn rows(&self, start: i64, len: i64) -> Self {
        Self {
            inputs: self.inputs.iter().map(|t| t.narrow(0, start, len)).collect(),
            targets: self.targets.narrow(0, start, len),
        }
    }

    fn head(self, limit: Option<u64>) -> Self {
        match limit {
            Some(l) if (l as usize) < self.len() => self.rows(0, l as i64),
            _ => self,
        }
    }
}

/// Copies rows `indices` of a contiguous host tensor `[N, ...]` into a new `[len, ...]` one.
fn gather_rows(t: &Tensor, indices: &[i64]) -> Tensor {
    let mut shape = t.size();
    let n = shape[0];
    let row_bytes = (t.numel() / n.max(1) as usize) * t.kind().elt_size_in_bytes();
    shape[0] = indices.len() as i64;
    let out = Tensor::empty(shape.as_slice(), (t.kind(), Device::Cpu));
    if row_bytes == 0 || indices.is_empty() {
        return out;
    }
    let src = t.contiguous();
    // SAFETY: `src` is a contiguous host tensor of `n` rows of `row_bytes` bytes and `out` a
    // fresh one of `indices.len()` rows; every index is checked to be below `n`; both stay
    // alive, and nothing else refers to `out`, while the slices exist.
    unsafe {
        let from = std::slice::from_raw_parts(src.data_ptr() as *const u8, n as usize * row_bytes);
        let to = std::slice::from_raw_parts_mut(out.data_ptr() as *mut u8, indices.len() * row_bytes);
        for (dst, &i) in to.chunks_exact_mut(row_bytes).zip(indices) {
            assert!((0..n).contains(&i), "example index {i} out of range 0..{n}");
            let at = i as usize * row_bytes;
            dst.copy_from_slice(&from[at..at + row_bytes]);
        }
    }
    out
}

/// What a model learns from a data set: the loss, the outputs and what "accuracy" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// One class per example (cross-entropy; accuracy is the fraction of right classes).
    Classification {
        /// Number of classes.
        classes: i64,
    },
    /// The next byte at every position of a window (cross-entropy over the vocabulary;
    /// accuracy is per token).
    LanguageModel {
        /// Vocabulary size (256 for bytes).
        vocab: i64,
    },
    /// Real values (mean squared error; no accuracy).
    Regression {
        /// Values per example.
        outputs: i64,
    },
}

/// A training split, a validation split, the task and the shape of one input.
#[derive(Debug)]
pub struct Dataset {
    /// Examples the model learns from.
    pub train: Split,
    /// Held-out examples for the validation loss and accuracy.
    pub val: Split,
    /// What is learned.
    pub task: Task,
    /// Shape of one input (`[C, H, W]` for images, `[T]` for token windows).
    pub input_shape: Vec<i64>,
}

/// Bytes: the vocabulary of byte-level language models.
pub const BYTE_VOCAB: i64 = 256;

impl Dataset {
    /// Loads the data set `cfg` describes. `context` is the window length of text data;
    /// `inputs` the arrays a TorchScript module takes by name (`model.torchscript.inputs`;
    /// empty: the one input `x`), read from `tensors` and `npz` data.
    pub fn load(cfg: &DataConfig, context: usize, inputs: &[String]) -> Result<Self, DataError> {
        let ds = match cfg.kind {
            DataKind::Idx => load_idx(cfg)?,
            DataKind::Text => load_text(cfg, context)?,
            DataKind::Tensors | DataKind::Npz => tensors::load(cfg, inputs)?,
            DataKind::ImageFolder => image_folder::load(cfg)?,
        };
        Ok(Self { train: ds.train.head(cfg.train_limit), val: ds.val.head(cfg.val_limit), ..ds })
    }
}

/// Where the configured data comes from: `data.dir` for IDX files and image folders,
/// `data.path` for the kinds read from one file (the key that does not apply is not shown).
pub fn source_of(cfg: &DataConfig) -> &Path {
    match cfg.kind {
        DataKind::Idx | DataKind::ImageFolder => &cfg.dir,
        _ => cfg.path.as_deref().unwrap_or(&cfg.dir),
    }
}

fn required_path(cfg: &DataConfig) -> Result<&Path, DataError> {
    cfg.path.as_deref().ok_or_else(|| DataError::Config(format!("data.kind {:?} needs data.path", cfg.kind)))
}

/// The number of validation examples out of `n`: `val_fraction` of them, at least one.
fn val_count(n: usize, fraction: f64, path: &Path) -> Result<usize, DataError> {
    let val = ((n as f64 * fraction).round() as usize).max(1);
    if n < 2 || val >= n {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            reason: format!("{n} examples are too few to split off a validation set (data.val_fraction = {fraction})"),
        });
    }
    Ok(val)
}

fn split_tail(inputs: Vec<Tensor>, targets: Tensor, val: usize) -> (Split, Split) {
    let n = targets.size()[0];
    let t = n - val as i64;
    let all = Split { inputs, targets };
    (all.rows(0, t), all.rows(t, val as i64))
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
    Ok((Split { inputs: vec![x], targets: y }, [h, w], classes))
}

/// A text file as non-overlapping windows of `context` bytes; each window's targets are the
/// same bytes shifted by one. The last `val_fraction` of the windows are the validation split.
fn load_text(cfg: &DataConfig, context: usize) -> Result<Dataset, DataError> {
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
    Ok(Dataset { train, val, task: Task::LanguageModel { vocab: BYTE_VOCAB }, input_shape: vec![context as i64] })
}

/// A file named by `data.path` that cannot be read: not there (a configuration error), or
/// unreadable.
/// An I/O error on `path`, which the configuration key `key` names (or lies under): a
/// missing file is the configuration's fault.
fn read_error(key: &'static str, path: &Path, source: std::io::Error) -> DataError {
    if source.kind() == std::io::ErrorKind::NotFound {
        DataError::NotFound { key, path: path.to_path_buf() }
    } else {
        DataError::Io { path: path.to_path_buf(), source }
    }
}

/// Refuses to load `path` when it would take more than the available memory (the host's,
/// or its memory cgroup's when that is smaller).
fn check_host_memory(path: &Path, needed: u64) -> Result<(), DataError> {
    let host = crate::memory::probe::host();
    match host.available {
        Some(available) if needed > available => {
            Err(DataError::TooLarge { path: path.to_path_buf(), needed, available, from: host.available_from() })
        }
        _ => Ok(()),
    }
}

/// The batches of one epoch: a permutation of `0..n` drawn from (seed, epoch), cut into
/// `batch_size` pieces (the last may be smaller).
pub fn epoch_batches(n: usize, batch_size: usize, seed: u64, epoch: u32) -> Vec<Vec<i64>> {
    let mut order: Vec<i64> = (0..n as i64).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(u64::from(epoch));
    order.shuffle(&mut rng);
    order.chunks(batch_size).map(<[i64]>::to_vec).collect()
}

/// Rank `rank`'s share of a global batch in a job of `world` ranks: every `world`-th
/// example from the `rank`-th on, so the ranks of a job together take exactly the batch one
/// process would (and a short last batch leaves the higher ranks fewer, maybe none).
pub fn shard(batch: &[i64], rank: usize, world: usize) -> Vec<i64> {
    batch.iter().skip(rank).step_by(world.max(1)).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shards_of_a_batch_are_disjoint_and_cover_it() {
        let batch: Vec<i64> = (10..17).collect();
        assert_eq!(shard(&batch, 0, 2), [10, 12, 14, 16]);
        assert_eq!(shard(&batch, 1, 2), [11, 13, 15]);
        assert_eq!(shard(&[5], 1, 2), Vec::<i64>::new());
        assert_eq!(shard(&batch, 0, 1), batch);
    }

    #[test]
    fn gathered_rows_equal_index_select() {
        let t = Tensor::arange(60, (Kind::Float, Device::Cpu)).view([10, 2, 3]);
        let idx = [7i64, 0, 7, 3];
        let ours = gather_rows(&t, &idx);
        assert!(ours.equal(&t.index_select(0, &Tensor::from_slice(&idx))));
        let labels = Tensor::arange(10, (Kind::Int64, Device::Cpu));
        assert!(gather_rows(&labels, &idx).equal(&labels.index_select(0, &Tensor::from_slice(&idx))));
    }

    #[test]
    fn epoch_order_depends_only_on_seed_and_epoch() {
        assert_eq!(epoch_batches(100, 7, 1, 3), epoch_batches(100, 7, 1, 3));
        assert_ne!(epoch_batches(100, 7, 1, 3), epoch_batches(100, 7, 1, 4));
        assert_ne!(epoch_batches(100, 7, 1, 3), epoch_batches(100, 7, 2, 3));
    }

    #[test]
    fn every_example_appears_once_per_epoch() {
        let batches = epoch_batches(100, 7, 1, 0);
        assert_eq!(batches.len(), 15);
        let mut all: Vec<i64> = batches.concat();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }
}

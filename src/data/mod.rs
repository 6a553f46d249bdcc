//! Data: an image classification data set held in memory, and its seeded batch order.
//!
//! The order of an epoch is a pure function of (seed, epoch), so a resumed run visits the
//! examples in exactly the order an uninterrupted one would, with no sampler state to save.

pub mod idx;

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Device, Kind, Tensor};

use crate::config::DataConfig;

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

/// One split of an image classification data set, on the host.
#[derive(Debug)]
pub struct Split {
    /// `[N, 1, H, W]` float images scaled to [0, 1].
    pub images: Tensor,
    /// `[N]` int64 class labels.
    pub labels: Tensor,
}

impl Split {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples at `indices`, moved to `device`.
    pub fn batch(&self, indices: &[i64], device: Device) -> (Tensor, Tensor) {
        let idx = Tensor::from_slice(indices);
        (self.images.index_select(0, &idx).to_device(device), self.labels.index_select(0, &idx).to_device(device))
    }
}

/// A training split, a validation split and the shape of one example.
#[derive(Debug)]
pub struct Dataset {
    /// Examples the model learns from.
    pub train: Split,
    /// Held-out examples for the validation loss (the data set's `t10k` files).
    pub val: Split,
    /// `[channels, height, width]` of one image.
    pub image_shape: [i64; 3],
    /// Number of classes (one more than the largest label in either split).
    pub classes: i64,
}

impl Dataset {
    /// Loads the IDX files named in `cfg`.
    pub fn load(cfg: &DataConfig) -> Result<Self, DataError> {
        let train = load_split(&cfg.dir, "train", cfg.train_limit)?;
        let val = load_split(&cfg.dir, "t10k", cfg.val_limit)?;
        let (train, train_shape) = train;
        let (val, val_shape) = val;
        if train_shape != val_shape {
            return Err(DataError::Mismatch {
                split: "t10k",
                dir: cfg.dir.clone(),
                reason: format!("images are {val_shape:?}, the train split's are {train_shape:?}"),
            });
        }
        let classes = train.labels.max().int64_value(&[]).max(val.labels.max().int64_value(&[])) + 1;
        Ok(Self { train, val, image_shape: [1, train_shape[0], train_shape[1]], classes })
    }
}

fn load_split(dir: &Path, split: &'static str, limit: Option<u64>) -> Result<(Split, [i64; 2]), DataError> {
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
    let n = limit.map_or(images.dims[0], |l| (l as usize).min(images.dims[0]));
    let (h, w) = (images.dims[1] as i64, images.dims[2] as i64);
    let pixels = (h * w) as usize;
    let x = Tensor::from_slice(&images.data[..n * pixels]).view([n as i64, 1, h, w]).to_kind(Kind::Float) / 255.0;
    let y = Tensor::from_slice(&labels.data[..n]).to_kind(Kind::Int64);
    Ok((Split { images: x, labels: y }, [h, w]))
}

/// Assembles batches on a background thread, a couple ahead of the training loop, so the
/// loop does not wait on gathering examples and copying them to the device. Dropping it
/// stops the thread.
pub struct Prefetcher {
    rx: Option<std::sync::mpsc::Receiver<(Tensor, Tensor)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Batches assembled ahead of the loop.
const PREFETCH_DEPTH: usize = 2;

impl Prefetcher {
    /// Yields `split`'s examples at each of `batches`, in order, on `device`.
    pub fn new(split: &Split, batches: Vec<Vec<i64>>, device: Device) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(PREFETCH_DEPTH);
        // Shallow clones share the data; the thread only reads it.
        let split = Split { images: split.images.shallow_clone(), labels: split.labels.shallow_clone() };
        let thread = std::thread::Builder::new()
            .name("batch-prefetch".into())
            .spawn(move || {
                for indices in batches {
                    if tx.send(split.batch(&indices, device)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning the batch prefetch thread");
        Self { rx: Some(rx), thread: Some(thread) }
    }
}

impl Iterator for Prefetcher {
    type Item = (Tensor, Tensor);
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Closing the channel first makes a blocked sender give up.
        self.rx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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

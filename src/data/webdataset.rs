//! `data.kind: webdataset`: tar shards as the `webdataset` library (or Python's `tarfile`)
//! writes them: each sample is the consecutive entries sharing a key (the entry's path up to
//! the first dot of its file name), here an image (`key.jpg`, `key.jpeg` or `key.png`) and
//! its class (`key.cls`, the class number as text). `data.path` is a folder (its `.tar`
//! files, sorted) or a brace pattern (`shards/train-{000000..000099}.tar`).
//!
//! The shards are indexed once at start: their tar headers are read and their data skipped
//! (seeking), each sample's image kept as (shard, byte offset, length) and its class read.
//! Training then reads the samples as a map-style data set: each image is read with a
//! positioned read of its byte range and decoded when a batch needs it, so host memory holds
//! the index (24 bytes a sample) and the batches in flight. The order of an epoch is the
//! seeded shuffle of every kind, over all the shards' samples; each rank of a data-parallel
//! job reads only its share of each batch. A resume restarts at the exact position with no
//! reader state to save: the position in the epoch's order is the checkpoint's.
//! The last `data.val_fraction` of the samples (in shard order) are held out.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::config::DataConfig;
use super::dataset::{Dataset, Task, MAX_CLASSES};
use super::error::DataError;
use super::examples::{ExampleError, Examples, Layout, Pass};
use super::images::Decoding;
use super::source::{read_error, val_count};
use super::split::Split;

/// Extensions of the image in a sample (lower case).
const IMAGES: &[&str] = &["jpg", "jpeg", "png"];

/// The most bytes a `.cls` entry may hold (a class number as text).
const MAX_CLS_BYTES: u64 = 64;

/// Where one sample's image lies, and its class.
#[derive(Debug, Clone, Copy)]
struct Sample {
    shard: u32,
    offset: u64,
    len: u32,
    class: i64,
}

/// A sample being gathered from consecutive entries: its key, its image (offset, length)
/// and its class, as far as they have been seen.
struct Gathering {
    key: String,
    image: Option<(u64, u64)>,
    class: Option<i64>,
}

/// The shards `data.path` names: a folder's `.tar` files, sorted, or a brace pattern's
/// expansion, in order.
fn shards(cfg: &DataConfig) -> Result<Vec<PathBuf>, DataError> {
    let pattern = cfg
        .path
        .as_deref()
        .ok_or_else(|| DataError::Config("data.kind webdataset needs data.path (a folder or a pattern)".into()))?;
    if pattern.is_dir() {
        let mut found: Vec<PathBuf> = std::fs::read_dir(pattern)
            .map_err(|e| read_error("data.path", pattern, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "tar"))
            .collect();
        found.sort();
        if found.is_empty() {
            return Err(DataError::Format {
                path: pattern.to_path_buf(),
                reason: "the folder holds no .tar files".into(),
            });
        }
        return Ok(found);
    }
    let text = pattern.to_string_lossy();
    let expanded = if text.contains('{') {
        bracoxide::explode(&text)
            .map_err(|e| DataError::Config(format!("data.path `{text}`: not a brace pattern: {e:?}")))?
    } else {
        vec![text.into_owned()]
    };
    let paths: Vec<PathBuf> = expanded.into_iter().map(PathBuf::from).collect();
    if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
        return Err(DataError::NotFound { key: "data.path", path: missing.clone() });
    }
    Ok(paths)
}

/// A sample's key and the extension of one of its entries, as `webdataset` splits an
/// entry's path: the key is everything up to the first dot of the file name.
fn key_and_extension(path: &str) -> (&str, &str) {
    let name_at = path.rfind('/').map_or(0, |i| i + 1);
    match path[name_at..].find('.') {
        Some(dot) => (&path[..name_at + dot], &path[name_at + dot + 1..]),
        None => (path, ""),
    }
}

/// Indexes `shard` (number `n`): every sample's image and class, reading only headers and
/// `.cls` entries.
fn index_shard(n: u32, shard: &Path, out: &mut Vec<Sample>) -> Result<(), DataError> {
    let bad = |reason: String| DataError::Format { path: shard.to_path_buf(), reason };
    let file = File::open(shard).map_err(|e| read_error("data.path", shard, e))?;
    let mut archive = tar::Archive::new(file);
    let entries = archive.entries_with_seek().map_err(|e| bad(format!("not a tar file: {e}")))?;
    let mut current: Option<Gathering> = None;
    let finish = |sample: Option<Gathering>, out: &mut Vec<Sample>| match sample {
        None => Ok(()),
        Some(Gathering { key, image: Some((offset, len)), class: Some(class) }) => {
            let len = u32::try_from(len).map_err(|_| bad(format!("sample `{key}`: its image is over 4 GiB")))?;
            out.push(Sample { shard: n, offset, len, class });
            Ok(())
        }
        Some(Gathering { key, image: None, .. }) => {
            Err(bad(format!("sample `{key}` has no image (.jpg, .jpeg or .png)")))
        }
        Some(Gathering { key, .. }) => Err(bad(format!("sample `{key}` has no class (.cls)"))),
    };
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("a damaged tar header after {} samples: {e}", out.len())))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(|e| bad(format!("an entry's name: {e}")))?.to_string_lossy().into_owned();
        let (key, ext) = key_and_extension(&path);
        if current.as_ref().is_none_or(|g| g.key != key) {
            finish(current.take(), out)?;
            current = Some(Gathering { key: key.to_string(), image: None, class: None });
        }
        let sample = current.as_mut().expect("just set");
        let ext = ext.to_ascii_lowercase();
        if IMAGES.contains(&ext.as_str()) {
            if sample.image.is_some() {
                return Err(bad(format!("sample `{key}` has two images")));
            }
            sample.image = Some((entry.raw_file_position(), entry.size()));
        } else if ext == "cls" {
            if entry.size() > MAX_CLS_BYTES {
                return Err(bad(format!("`{path}` holds {} bytes, not a class number", entry.size())));
            }
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(|e| bad(format!("reading `{path}`: {e}")))?;
            let class: i64 = text
                .trim()
                .parse()
                .map_err(|_| bad(format!("`{path}` holds `{}`, not a class number", text.trim())))?;
            if !(0..MAX_CLASSES).contains(&class) {
                return Err(bad(format!("`{path}` holds class {class}: classes must be in 0..{MAX_CLASSES}")));
            }
            sample.class = Some(class);
        }
    }
    finish(current.take(), out)
}

/// The samples of the shards, as examples.
#[derive(Debug)]
struct Shards {
    paths: Vec<PathBuf>,
    files: Vec<File>,
    samples: Arc<Vec<Sample>>,
    /// Where this split's samples start in `samples`.
    first: usize,
    len: usize,
    decoding: Decoding,
}

impl Examples for Shards {
    fn len(&self) -> usize {
        self.len
    }

    fn layout(&self) -> &Layout {
        &self.decoding.layout
    }

    fn read(&self, i: usize, pass: Pass, out: &mut [&mut [u8]]) -> Result<(), ExampleError> {
        let s = self.samples[self.first + i];
        let path = &self.paths[s.shard as usize];
        let fail = |reason: String| ExampleError { path: path.clone(), index: self.first + i, reason };
        let mut data = vec![0u8; s.len as usize];
        self.files[s.shard as usize]
            .read_exact_at(&mut data, s.offset)
            .map_err(|e| fail(format!("reading the image at byte {}: {e}", s.offset)))?;
        self.decoding.example(&data, s.class, pass.draws(self.first + i), out).map_err(fail)
    }
}

/// Indexes the shards `data.path` names and opens them as a data set (see the module docs).
pub(super) fn load(cfg: &DataConfig) -> Result<Dataset, DataError> {
    let paths = shards(cfg)?;
    let mut samples = Vec::new();
    let start = std::time::Instant::now();
    for (n, shard) in paths.iter().enumerate() {
        let n = u32::try_from(n).map_err(|_| DataError::Config("more than 2^32 shards".into()))?;
        index_shard(n, shard, &mut samples)?;
    }
    let files =
        paths.iter().map(|p| File::open(p).map_err(|e| read_error("data.path", p, e))).collect::<Result<_, _>>()?;
    let classes = samples.iter().map(|s| s.class).max().map_or(0, |c| c + 1);
    let per_shard: HashMap<u32, usize> = samples.iter().fold(HashMap::new(), |mut m, s| {
        *m.entry(s.shard).or_default() += 1;
        m
    });
    tracing::info!(
        shards = paths.len(),
        samples = samples.len(),
        classes,
        empty_shards = paths.len() - per_shard.len(),
        seconds = format_args!("{:.2}", start.elapsed().as_secs_f64()),
        "webdataset shards indexed: images read as batches need them"
    );
    let first = paths.first().expect("shards() found at least one");
    let val = val_count(samples.len(), cfg.val_fraction, first)?;
    let train = samples.len() - val;
    let samples = Arc::new(samples);
    let train_decoding = Decoding::new(cfg.channels, cfg.image_size, &cfg.transforms.train)?;
    let val_decoding = Decoding::new(cfg.channels, cfg.image_size, &cfg.transforms.eval)?;
    let input_shape = train_decoding.layout.inputs[0].0.clone();
    let files: Vec<File> = files;
    let split = |first: usize, len: usize, decoding: Decoding| -> Result<Split, DataError> {
        let files = files
            .iter()
            .map(File::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DataError::Io { path: paths[0].clone(), source: e })?;
        Ok(Split::streamed(Arc::new(Shards {
            paths: paths.clone(),
            files,
            samples: Arc::clone(&samples),
            first,
            len,
            decoding,
        })))
    };
    Ok(Dataset {
        train: split(0, train, train_decoding)?,
        val: split(train, val, val_decoding)?,
        task: Task::Classification { classes },
        input_shape,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_cut_at_the_first_dot_of_the_file_name_as_webdataset_cuts_them() {
        assert_eq!(key_and_extension("000123.jpg"), ("000123", "jpg"));
        assert_eq!(key_and_extension("a/b.c/000123.seg.png"), ("a/b.c/000123", "seg.png"));
        assert_eq!(key_and_extension("dir/noext"), ("dir/noext", ""));
    }
}

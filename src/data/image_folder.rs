//! Image folders in torchvision's `ImageFolder` layout (`data.kind: image_folder`): one
//! subfolder per class under `data.dir`, the classes numbered in the sorted order of their
//! folder names, as torchvision numbers them. With `train/` and `val/` (or `test/`)
//! subfolders, each is such a tree and gives that split; otherwise the last
//! `data.val_fraction` of each class's files (sorted by name) are held out.
//!
//! The files are listed and classed up front (paths only); each image is read and decoded
//! when a batch needs it, by the decode workers (`data.workers`), so a folder larger than
//! host memory trains. PNG and JPEG files are decoded by the `image` crate, converted to
//! `data.channels` (3: RGB, 1: grayscale) and resized to `data.image_size` (bilinear), as
//! float32 in [0, 1], `[C, H, W]` per image, like IDX images. Files with other extensions are
//! skipped; a PNG/JPEG that does not decode, or a JPEG cut short, stops the run naming it and
//! its example index, as a class folder without images and a symbolic link leading out of
//! `data.dir` stop it at start.
//!
//! Memory: each image's header is read before it is decoded, and a decode is refused (naming
//! the image) when its full-size buffers would take more than the available memory (the
//! host's or the memory cgroup's) shared by the cores; the `image` crate's limits then hold
//! the decode to its header's size.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use super::config::DataConfig;
use super::dataset::{Dataset, Task};
use super::error::DataError;
use super::examples::{ExampleError, Examples, Layout, Pass};
use super::images::Decoding;
use super::source::read_error;
use super::split::Split;

/// Extensions decoded (lower case).
const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

/// One split's files: (path, class index).
type Files = Vec<(PathBuf, i64)>;

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| read_error("data.dir", dir, e))? {
        out.push(entry.map_err(|e| read_error("data.dir", dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

/// Whether `entry` is a class folder. A symbolic link to a folder counts only when it stays
/// inside `boundary` (the canonical `data.dir`): a link to `/` would make the whole disk a
/// class, so one that leaves the data is refused, naming it.
fn is_class_dir(entry: &Path, boundary: &Path) -> Result<bool, DataError> {
    let meta = std::fs::symlink_metadata(entry).map_err(|e| read_error("data.dir", entry, e))?;
    if !meta.file_type().is_symlink() {
        return Ok(meta.is_dir());
    }
    match std::fs::canonicalize(entry) {
        Ok(target) if target.is_dir() && !target.starts_with(boundary) => Err(DataError::Unusable {
            path: entry.to_path_buf(),
            reason: format!(
                "it is a symbolic link to {}, outside data.dir {}: class folders must stay inside the data",
                target.display(),
                boundary.display()
            ),
        }),
        Ok(target) => Ok(target.is_dir()),
        // A dangling link is not a folder.
        Err(_) => Ok(false),
    }
}

/// The class folders of `root` (sorted) and, per class, its image files (sorted). A class
/// folder without images is refused naming it, as torchvision's `ImageFolder` refuses it:
/// counted as a class, it would give the model an output no example ever trains.
fn scan(root: &Path, boundary: &Path) -> Result<(Vec<String>, Vec<Vec<PathBuf>>), DataError> {
    let mut classes = Vec::new();
    let mut files = Vec::new();
    for dir in sorted_entries(root)? {
        if !is_class_dir(&dir, boundary)? {
            continue;
        }
        let images: Vec<PathBuf> = sorted_entries(&dir)?
            .into_iter()
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            })
            .collect();
        if images.is_empty() {
            return Err(DataError::Unusable {
                path: dir,
                reason: "this class folder holds no PNG or JPEG images; remove it or add its images".into(),
            });
        }
        classes.push(dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        files.push(images);
    }
    if classes.is_empty() {
        return Err(DataError::Format {
            path: root.to_path_buf(),
            reason: "holds no class folders (ImageFolder layout: one subfolder of images per class)".into(),
        });
    }
    Ok((classes, files))
}

fn numbered(files: Vec<Vec<PathBuf>>) -> Files {
    files.into_iter().enumerate().flat_map(|(c, fs)| fs.into_iter().map(move |f| (f, c as i64))).collect()
}

/// One split's images, decoded as batches need them.
#[derive(Debug)]
struct Images {
    files: Files,
    decoding: Decoding,
}

impl Examples for Images {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn layout(&self) -> &Layout {
        &self.decoding.layout
    }

    fn read(&self, i: usize, pass: Pass, out: &mut [&mut [u8]]) -> Result<(), ExampleError> {
        let (path, class) = &self.files[i];
        let fail = |reason: String| ExampleError { path: path.clone(), index: i, reason };
        let data = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        self.decoding.example(&data, *class, pass.draws(i), out).map_err(fail)
    }
}

/// Loads the image folder `cfg.dir` (see the module's documentation).
pub(super) fn load(cfg: &DataConfig) -> Result<Dataset, DataError> {
    let root = cfg.dir.as_path();
    let boundary = std::fs::canonicalize(root).map_err(|e| read_error("data.dir", root, e))?;
    // Validated: channels 1 or 3, sizes in 1..=8192.
    let [h, w] = cfg.image_size;
    let channels = cfg.channels;
    let val_dir = ["val", "test"].iter().map(|d| root.join(d)).find(|p| p.is_dir());
    let (classes, train, val) = match (root.join("train"), val_dir) {
        (t, Some(v)) if t.is_dir() => {
            let (classes, train) = scan(&t, &boundary)?;
            let (val_classes, val) = scan(&v, &boundary)?;
            if val_classes != classes {
                return Err(DataError::Format {
                    path: v,
                    reason: format!("its classes {val_classes:?} are not train/'s {classes:?}"),
                });
            }
            (classes, numbered(train), numbered(val))
        }
        _ => {
            let (classes, files) = scan(root, &boundary)?;
            let (mut train, mut val) = (Vec::new(), Vec::new());
            for (c, fs) in files.into_iter().enumerate() {
                let held = ((fs.len() as f64 * cfg.val_fraction).round() as usize).min(fs.len());
                let cut = fs.len() - held;
                for (i, f) in fs.into_iter().enumerate() {
                    if i < cut { &mut train } else { &mut val }.push((f, c as i64));
                }
            }
            (classes, train, val)
        }
    };
    if train.is_empty() || val.is_empty() {
        return Err(DataError::Format {
            path: root.to_path_buf(),
            reason: format!(
                "{} training and {} validation images (PNG or JPEG) found: both splits need at least one",
                train.len(),
                val.len()
            ),
        });
    }
    tracing::info!(
        classes = classes.len(),
        train = train.len(),
        val = val.len(),
        "images listed: decoded as batches need them"
    );
    let transforms = &cfg.transforms;
    let (train_decoding, val_decoding) =
        (Decoding::new(channels, [h, w], &transforms.train)?, Decoding::new(channels, [h, w], &transforms.eval)?);
    let input = train_decoding.layout.inputs[0].0.clone();
    let split = |files: Files, decoding: Decoding| Split::streamed(Arc::new(Images { files, decoding }));
    Ok(Dataset {
        train: split(train, train_decoding),
        val: split(val, val_decoding),
        task: Task::Classification { classes: classes.len() as i64 },
        input_shape: input,
    })
}

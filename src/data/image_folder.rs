//! Image folders in torchvision's `ImageFolder` layout (`data.kind: image_folder`): one
//! subfolder per class under `data.dir`, the classes numbered in the sorted order of their
//! folder names, as torchvision numbers them. With `train/` and `val/` (or `test/`)
//! subfolders, each is such a tree and gives that split; otherwise the last
//! `data.val_fraction` of each class's files (sorted by name) are held out.
//!
//! PNG and JPEG files are decoded by the `image` crate, converted to `data.channels` (3: RGB,
//! 1: grayscale) and resized to `data.image_size` (bilinear), then held as float32 in
//! [0, 1], `[C, H, W]` per image, like IDX images. Decoding is spread over the host's cores.
//! Files with other extensions are skipped; a PNG/JPEG that does not decode is an error
//! naming it.

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::*;

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

/// The class folders of `root` (sorted) and, per class, its image files (sorted).
fn scan(root: &Path) -> Result<(Vec<String>, Vec<Vec<PathBuf>>), DataError> {
    let mut classes = Vec::new();
    let mut files = Vec::new();
    for dir in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
        let images: Vec<PathBuf> = sorted_entries(&dir)?
            .into_iter()
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            })
            .collect();
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

/// Decodes, converts and resizes one image into `out` (`C * H * W` floats in [0, 1]).
fn decode(path: &Path, channels: u32, [h, w]: [u32; 2], out: &mut [f32]) -> Result<(), DataError> {
    let bad = |reason: String| DataError::Format { path: path.to_path_buf(), reason };
    let img = image::ImageReader::open(path)
        .map_err(|e| read_error("data.dir", path, e))?
        .with_guessed_format()
        .map_err(|e| read_error("data.dir", path, e))?
        .decode()
        .map_err(|e| bad(format!("cannot decode the image: {e}")))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(bad("the image is empty".into()));
    }
    let filter = image::imageops::FilterType::Triangle;
    let plane = (h * w) as usize;
    if channels == 1 {
        let g = image::imageops::resize(&img.to_luma8(), w, h, filter);
        for (o, p) in out.iter_mut().zip(g.pixels()) {
            *o = f32::from(p.0[0]) / 255.0;
        }
    } else {
        let rgb = image::imageops::resize(&img.to_rgb8(), w, h, filter);
        for (i, p) in rgb.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = f32::from(p.0[c]) / 255.0;
            }
        }
    }
    Ok(())
}

/// Decodes `files` into a `[N, C, H, W]` float tensor and `[N]` labels, over the host's cores.
fn load_split(files: &Files, channels: u32, size: [u32; 2]) -> Result<Split, DataError> {
    let per_image = channels as usize * size[0] as usize * size[1] as usize;
    let mut pixels = vec![0f32; files.len() * per_image];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(files.len().max(1));
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .zip(pixels.chunks_mut(chunk * per_image))
            .map(|(fs, out)| {
                s.spawn(move || {
                    fs.iter().zip(out.chunks_mut(per_image)).try_for_each(|((f, _), o)| decode(f, channels, size, o))
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().expect("an image decoder panicked"))
    })?;
    let labels: Vec<i64> = files.iter().map(|(_, c)| *c).collect();
    let n = files.len() as i64;
    let x = Tensor::from_slice(&pixels).view([n, i64::from(channels), i64::from(size[0]), i64::from(size[1])]);
    Ok(Split { inputs: vec![x], targets: Tensor::from_slice(&labels).to_kind(Kind::Int64) })
}

/// Loads the image folder `cfg.dir` (see the module's documentation).
pub(super) fn load(cfg: &DataConfig) -> Result<Dataset, DataError> {
    let root = cfg.dir.as_path();
    // Validated: channels 1 or 3, sizes in 1..=8192.
    let [h, w] = cfg.image_size;
    let channels = cfg.channels;
    let val_dir = ["val", "test"].iter().map(|d| root.join(d)).find(|p| p.is_dir());
    let (classes, train, val) = match (root.join("train"), val_dir) {
        (t, Some(v)) if t.is_dir() => {
            let (classes, train) = scan(&t)?;
            let (val_classes, val) = scan(&v)?;
            if val_classes != classes {
                return Err(DataError::Format {
                    path: v,
                    reason: format!("its classes {val_classes:?} are not train/'s {classes:?}"),
                });
            }
            (classes, numbered(train), numbered(val))
        }
        _ => {
            let (classes, files) = scan(root)?;
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
    let bytes = (train.len() + val.len()) as u64 * u64::from(channels) * u64::from(h) * u64::from(w) * 4;
    check_host_memory(root, bytes.saturating_mul(2))?;
    tracing::info!(classes = classes.len(), train = train.len(), val = val.len(), "decoding images");
    Ok(Dataset {
        train: load_split(&train, channels, [h, w])?,
        val: load_split(&val, channels, [h, w])?,
        task: Task::Classification { classes: classes.len() as i64 },
        input_shape: vec![i64::from(channels), i64::from(h), i64::from(w)],
    })
}

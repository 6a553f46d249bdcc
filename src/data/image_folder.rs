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

use tch::Kind;

use super::config::DataConfig;
use super::dataset::{Dataset, Task};
use super::error::DataError;
use super::examples::{ExampleError, Examples, Layout};
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

/// The most host memory decoding one image takes, from its header: the file's bytes, the
/// decoder's full-size buffer (width x height x the decoded color type's bytes per pixel),
/// and, when that type is not the one wanted, its conversion to `channels` bytes per pixel
/// before the resize. Returns it with the image's size.
fn decode_bytes(data: &[u8], channels: u32) -> Result<(u64, (u32, u32)), String> {
    let mut reader =
        image::ImageReader::new(std::io::Cursor::new(data)).with_guessed_format().map_err(|e| e.to_string())?;
    // Only the header is read here: the limits apply to the decode, planned from it.
    reader.no_limits();
    let decoder = reader.into_decoder().map_err(|e| format!("cannot decode the image's header: {e}"))?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    let full = image::ImageDecoder::total_bytes(&decoder);
    // `into_rgb8`/`into_luma8` convert in a second buffer only when the decoded type differs.
    let target = if channels == 1 { image::ColorType::L8 } else { image::ColorType::Rgb8 };
    let converted = if image::ImageDecoder::color_type(&decoder) == target {
        0
    } else {
        u64::from(w) * u64::from(h) * u64::from(channels)
    };
    Ok(((data.len() as u64).saturating_add(full).saturating_add(converted), (w, h)))
}

/// Whether JPEG data ends its last scan: a JPEG cut short decodes without an error (the
/// decoder fills the missing rows with grey), so completeness is checked here. The end of
/// image marker (FF D9) must come after the last start of scan (FF DA): neither can occur
/// inside entropy-coded data (an FF there is followed by 00 or a restart marker), and an
/// embedded thumbnail's own markers come before the main image's scans.
fn jpeg_is_complete(data: &[u8]) -> bool {
    let last = |marker: u8| data.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(scan), Some(end)) => end > scan,
        _ => false,
    }
}

/// Decodes the image in `data`, after planning the decode from its header: an image whose
/// decode would take more than `cap` bytes (a decompression bomb: a few KB of PNG that
/// decode to gigabytes) is refused before anything is allocated for it, and the decoder
/// may allocate only what the header declared, so a header that lies cannot make it take
/// more.
fn decode_planned(data: &[u8], channels: u32, cap: u64) -> Result<image::DynamicImage, String> {
    let mut reader =
        image::ImageReader::new(std::io::Cursor::new(data)).with_guessed_format().map_err(|e| e.to_string())?;
    let (bytes, (w, h)) = decode_bytes(data, channels)?;
    if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(data) {
        return Err("the JPEG data is cut short (no end-of-image marker after its last scan)".into());
    }
    if bytes > cap {
        return Err(format!(
            "this {w}x{h} image takes {} to decode at full size, more than the {} each decoder may use (the \
             available memory shared by the cores)",
            bytesize::ByteSize(bytes),
            bytesize::ByteSize(cap)
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(bytes);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| format!("cannot decode the image: {e}"))?;
    if img.width() == 0 || img.height() == 0 {
        return Err("the image is empty".into());
    }
    Ok(img)
}

/// Converts `img` to `channels` and resizes it to `[h, w]` (bilinear) into `out`
/// (`C * H * W` floats in [0, 1]).
fn pixels(img: image::DynamicImage, channels: u32, [h, w]: [u32; 2], out: &mut [f32]) {
    let filter = image::imageops::FilterType::Triangle;
    let plane = (h * w) as usize;
    if channels == 1 {
        let g = image::imageops::resize(&img.into_luma8(), w, h, filter);
        for (o, p) in out.iter_mut().zip(g.pixels()) {
            *o = f32::from(p.0[0]) / 255.0;
        }
    } else {
        let rgb = image::imageops::resize(&img.into_rgb8(), w, h, filter);
        for (i, p) in rgb.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = f32::from(p.0[c]) / 255.0;
            }
        }
    }
}

/// One split's images, decoded as batches need them.
#[derive(Debug)]
struct Images {
    files: Files,
    channels: u32,
    size: [u32; 2],
    /// The most one decode may take (see [`decode_planned`]).
    cap: u64,
    layout: Layout,
}

impl Examples for Images {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn read(&self, i: usize, out: &mut [&mut [u8]]) -> Result<(), ExampleError> {
        let (path, class) = &self.files[i];
        let fail = |reason: String| ExampleError { path: path.clone(), index: i, reason };
        let data = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        let img = decode_planned(&data, self.channels, self.cap).map_err(fail)?;
        drop(data);
        let [x, y] = out else { unreachable!("one input and the target") };
        let mut floats = vec![0f32; x.len() / 4];
        pixels(img, self.channels, self.size, &mut floats);
        for (dst, v) in x.chunks_exact_mut(4).zip(&floats) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
        y.copy_from_slice(&class.to_le_bytes());
        Ok(())
    }
}

/// The most host memory one decode may take: the available memory (the host's or its
/// memory cgroup's) shared by as many decodes as there are cores, as many as may run at once.
fn decode_cap(host: &crate::memory::probe::HostMemory) -> u64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    host.available.map_or(u64::MAX, |a| a / cores)
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
    let cap = decode_cap(&crate::memory::probe::host());
    tracing::info!(
        classes = classes.len(),
        train = train.len(),
        val = val.len(),
        "images listed: decoded as batches need them"
    );
    let input = vec![i64::from(channels), i64::from(h), i64::from(w)];
    let layout = Layout { inputs: vec![(input.clone(), Kind::Float)], target: (vec![], Kind::Int64) };
    let split =
        |files: Files| Split::streamed(Arc::new(Images { files, channels, size: [h, w], cap, layout: layout.clone() }));
    Ok(Dataset {
        train: split(train),
        val: split(val),
        task: Task::Classification { classes: classes.len() as i64 },
        input_shape: input,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::probe::HostMemory;

    #[test]
    fn a_decompression_bomb_is_refused_before_it_is_allocated() {
        // 7 KB on disk, 12 MB decoded (2000 x 2000 RGB), 16 MB with its grey conversion.
        let mut png = Vec::new();
        image::RgbImage::new(2000, 2000)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let per_decode = png.len() as u64 + 2000 * 2000 * 4;
        assert_eq!(decode_bytes(&png, 1).unwrap(), (per_decode, (2000, 2000)));
        assert!(decode_planned(&png, 1, per_decode).is_ok());
        let e = decode_planned(&png, 1, per_decode - 1).unwrap_err();
        assert!(e.contains("2000x2000") && e.contains("each decoder may use"), "{e}");
        let cap = decode_cap(&HostMemory { available: Some(8 << 30), cgroup: None, rss: None, peak_rss: None });
        let cores = std::thread::available_parallelism().unwrap().get() as u64;
        assert_eq!(cap, (8 << 30) / cores);
    }

    #[test]
    fn a_jpeg_is_complete_only_with_its_end_marker_after_the_last_scan() {
        assert!(jpeg_is_complete(&[0xFF, 0xD8, 0xFF, 0xDA, 1, 2, 0xFF, 0x00, 0xFF, 0xD9]));
        assert!(!jpeg_is_complete(&[0xFF, 0xD8, 0xFF, 0xDA, 1, 2, 0xFF, 0x00]));
        // A thumbnail's end marker before the main scan does not count.
        assert!(!jpeg_is_complete(&[0xFF, 0xD8, 0xFF, 0xD9, 0xFF, 0xDA, 1, 2]));
    }
}

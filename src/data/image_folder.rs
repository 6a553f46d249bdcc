//! Image folders in torchvision's `ImageFolder` layout (`data.kind: image_folder`): one
//! subfolder per class under `data.dir`, the classes numbered in the sorted order of their
//! folder names, as torchvision numbers them. With `train/` and `val/` (or `test/`)
//! subfolders, each is such a tree and gives that split; otherwise the last
//! `data.val_fraction` of each class's files (sorted by name) are held out.
//!
//! PNG and JPEG files are decoded by the `image` crate, converted to `data.channels` (3: RGB,
//! 1: grayscale) and resized to `data.image_size` (bilinear), then held as float32 in
//! [0, 1], `[C, H, W]` per image, like IDX images. Decoding is spread over the host's cores.
//! Files with other extensions are skipped; a PNG/JPEG that does not decode, or a JPEG cut
//! short, is an error naming it, as are a class folder without images and a symbolic link
//! leading out of `data.dir`.
//!
//! Memory: each image's header is read first, so the check counts every decoder's
//! full-size buffer, not just the resized output; as many decode at once as the available
//! memory (the host's or the memory cgroup's) allows, and the `image` crate's limits hold
//! each decode to its header's size.

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::config::DataConfig;
use super::dataset::{Dataset, Task};
use super::error::DataError;
use super::source::{check_host_memory, read_error};
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
/// before the resize.
fn decode_bytes(path: &Path, channels: u32) -> Result<(u64, (u32, u32)), DataError> {
    let bad = |reason: String| DataError::Format { path: path.to_path_buf(), reason };
    let file_len = std::fs::metadata(path).map_err(|e| read_error("data.dir", path, e))?.len();
    let mut reader = image::ImageReader::open(path)
        .map_err(|e| read_error("data.dir", path, e))?
        .with_guessed_format()
        .map_err(|e| read_error("data.dir", path, e))?;
    // Only the header is read here: the limits apply to the decode, planned from it.
    reader.no_limits();
    let decoder = reader.into_decoder().map_err(|e| bad(format!("cannot decode the image's header: {e}")))?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    let full = image::ImageDecoder::total_bytes(&decoder);
    // `into_rgb8`/`into_luma8` convert in a second buffer only when the decoded type differs.
    let target = if channels == 1 { image::ColorType::L8 } else { image::ColorType::Rgb8 };
    let converted = if image::ImageDecoder::color_type(&decoder) == target {
        0
    } else {
        u64::from(w) * u64::from(h) * u64::from(channels)
    };
    Ok((file_len.saturating_add(full).saturating_add(converted), (w, h)))
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

/// Decodes, converts and resizes one image into `out` (`C * H * W` floats in [0, 1]). The
/// decoder may allocate at most `budget` bytes, and only an image of the header's `size`
/// (planned by [`decode_bytes`]): a header that changed or lies cannot make it take more.
fn decode(
    path: &Path,
    channels: u32,
    [h, w]: [u32; 2],
    (size, budget): ((u32, u32), u64),
    out: &mut [f32],
) -> Result<(), DataError> {
    let bad = |reason: String| DataError::Format { path: path.to_path_buf(), reason };
    let data = std::fs::read(path).map_err(|e| read_error("data.dir", path, e))?;
    let mut reader =
        image::ImageReader::new(std::io::Cursor::new(&data)).with_guessed_format().map_err(|e| bad(e.to_string()))?;
    if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(&data) {
        return Err(bad("the JPEG data is cut short (no end-of-image marker after its last scan)".into()));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(size.0);
    limits.max_image_height = Some(size.1);
    limits.max_alloc = Some(budget);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| bad(format!("cannot decode the image: {e}")))?;
    drop(data);
    if img.width() == 0 || img.height() == 0 {
        return Err(bad("the image is empty".into()));
    }
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
    Ok(())
}

/// A file's planned decode: its header's size and the bytes decoding it takes.
type Plan = ((u32, u32), u64);

/// Decodes `files` into a `[N, C, H, W]` float tensor and `[N]` labels, `threads` at a time.
fn load_split(
    files: &Files,
    plans: &[Plan],
    channels: u32,
    size: [u32; 2],
    threads: usize,
) -> Result<Split, DataError> {
    let per_image = channels as usize * size[0] as usize * size[1] as usize;
    let mut pixels = vec![0f32; files.len() * per_image];
    let threads = threads.clamp(1, files.len().max(1));
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .zip(plans.chunks(chunk))
            .zip(pixels.chunks_mut(chunk * per_image))
            .map(|((fs, ps), out)| {
                s.spawn(move || {
                    fs.iter()
                        .zip(ps)
                        .zip(out.chunks_mut(per_image))
                        .try_for_each(|(((f, _), &plan), o)| decode(f, channels, size, plan, o))
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().expect("an image decoder panicked"))
    })?;
    let labels: Vec<i64> = files.iter().map(|(_, c)| *c).collect();
    let n = files.len() as i64;
    let x = Tensor::from_slice(&pixels).view([n, i64::from(channels), i64::from(size[0]), i64::from(size[1])]);
    Ok(Split::in_memory(vec![x], Tensor::from_slice(&labels).to_kind(Kind::Int64)))
}

/// Plans the decodes of `files` from their headers, and how many may run at once: each
/// takes its largest decode's memory ([`decode_bytes`]) on top of `held` (the loaded
/// images), within the available memory and the host's cores. An image whose one decode
/// cannot fit is refused, naming it.
fn plan_decodes(
    files: &[&(PathBuf, i64)],
    channels: u32,
    held: u64,
    host: &crate::memory::probe::HostMemory,
) -> Result<(Vec<Plan>, usize), DataError> {
    let mut plans = Vec::with_capacity(files.len());
    let mut largest: Option<(u64, &Path, (u32, u32))> = None;
    for (path, _) in files {
        let (bytes, dims) = decode_bytes(path, channels)?;
        if largest.is_none_or(|(b, _, _)| bytes > b) {
            largest = Some((bytes, path, dims));
        }
        plans.push((dims, bytes));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (Some(available), Some((per_decode, path, (w, h)))) = (host.available, largest) else {
        return Ok((plans, cores));
    };
    let room = available.saturating_sub(held);
    if per_decode > room {
        return Err(DataError::Unusable {
            path: path.to_path_buf(),
            reason: format!(
                "this {w}x{h} image takes {} to decode at full size, and {} of {} is available beside the {} the \
                 loaded images take",
                bytesize::ByteSize(per_decode),
                bytesize::ByteSize(room),
                host.available_from(),
                bytesize::ByteSize(held)
            ),
        });
    }
    let threads = usize::try_from(room / per_decode.max(1)).unwrap_or(usize::MAX).clamp(1, cores);
    tracing::debug!(threads, per_decode, available, "image decodes at once");
    Ok((plans, threads))
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
    // The float pixels, then libtorch's copy of them.
    let held =
        ((train.len() + val.len()) as u64 * u64::from(channels) * u64::from(h) * u64::from(w) * 4).saturating_mul(2);
    check_host_memory(root, held)?;
    let (plans, threads) =
        plan_decodes(&train.iter().chain(&val).collect::<Vec<_>>(), channels, held, &crate::memory::probe::host())?;
    let (train_plans, val_plans) = plans.split_at(train.len());
    tracing::info!(classes = classes.len(), train = train.len(), val = val.len(), threads, "decoding images");
    Ok(Dataset {
        train: load_split(&train, train_plans, channels, [h, w], threads)?,
        val: load_split(&val, val_plans, channels, [h, w], threads)?,
        task: Task::Classification { classes: classes.len() as i64 },
        input_shape: vec![i64::from(channels), i64::from(h), i64::from(w)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::probe::HostMemory;

    fn memory(available: u64) -> HostMemory {
        HostMemory { available: Some(available), cgroup: Some("/sys/fs/cgroup/job".into()), rss: None, peak_rss: None }
    }

    #[test]
    fn image_decodes_are_counted_at_full_size_and_bounded_by_memory() {
        let dir = tempfile::tempdir().unwrap();
        // 7 KB on disk, 12 MB decoded (2000 x 2000 RGB), 16 MB with its grey conversion.
        let big = dir.path().join("big.png");
        image::RgbImage::new(2000, 2000).save(&big).unwrap();
        let files = [(big.clone(), 0i64), (big.clone(), 0), (big.clone(), 0), (big, 0)];
        let refs: Vec<_> = files.iter().collect();
        let per_decode = std::fs::metadata(&files[0].0).unwrap().len() + 2000 * 2000 * 4;
        // Room for one decode beside 1 MB of loaded images: one at a time.
        let (plans, threads) = plan_decodes(&refs, 1, 1 << 20, &memory((1 << 20) + per_decode + 10)).unwrap();
        assert_eq!((threads, plans[0]), (1, ((2000, 2000), per_decode)));
        // Room for none: refused, naming the image and the cgroup.
        let e = plan_decodes(&refs, 1, 1 << 20, &memory(per_decode)).unwrap_err().to_string();
        assert!(e.contains("big.png") && e.contains("2000x2000") && e.contains("cgroup limit"), "{e}");
    }

    #[test]
    fn a_jpeg_is_complete_only_with_its_end_marker_after_the_last_scan() {
        assert!(jpeg_is_complete(&[0xFF, 0xD8, 0xFF, 0xDA, 1, 2, 0xFF, 0x00, 0xFF, 0xD9]));
        assert!(!jpeg_is_complete(&[0xFF, 0xD8, 0xFF, 0xDA, 1, 2, 0xFF, 0x00]));
        // A thumbnail's end marker before the main scan does not count.
        assert!(!jpeg_is_complete(&[0xFF, 0xD8, 0xFF, 0xD9, 0xFF, 0xDA, 1, 2]));
    }
}

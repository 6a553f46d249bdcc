//! Decoding one image for a batch, shared by the image kinds (`image_folder`, `webdataset`):
//! planned from its header so that a decompression bomb is refused before it is allocated,
//! then converted and resized to the model's input.

use std::sync::Arc;

use tch::Kind;

use super::error::DataError;
use super::examples::Layout;
use super::transforms::{Draws, Pipeline, Transform};

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

/// How the images of a split become examples: decoded (planned, see [`decode_planned`]),
/// then through the split's transforms (`data.transforms.train` or `.eval`; with none,
/// converted to `channels` and resized to `data.image_size`), as float32 `[C, H, W]`, with
/// an int64 class as the target.
#[derive(Debug, Clone)]
pub(super) struct Decoding {
    channels: u32,
    pipeline: Arc<Pipeline>,
    /// The most one decode may take ([`decode_cap`], read when the data set is opened).
    cap: u64,
    /// One example's layout: the image, then the class.
    pub(super) layout: Layout,
}

impl Decoding {
    /// Images of `channels` (validated: 1 or 3) through `transforms`, ending `size` (`[h, w]`).
    pub(super) fn new(channels: u32, size: [u32; 2], transforms: &[Transform]) -> Result<Self, DataError> {
        let pipeline = Pipeline::new(transforms, size, channels)
            .map_err(|e| DataError::Config(format!("data.transforms: {e}")))?;
        let input = pipeline.output_shape().iter().map(|&d| d as i64).collect();
        let layout = Layout { inputs: vec![(input, Kind::Float)], target: (vec![], Kind::Int64) };
        Ok(Self { channels, pipeline: Arc::new(pipeline), cap: decode_cap(&crate::memory::probe::host()), layout })
    }

    /// Decodes the image file `data` through the transforms (drawing from `draws`) into
    /// `out[0]` (its row of the batch's images) and writes `class` into `out[1]`.
    pub(super) fn example(&self, data: &[u8], class: i64, draws: Draws, out: &mut [&mut [u8]]) -> Result<(), String> {
        let img = decode_planned(data, self.channels, self.cap)?;
        let [x, y] = out else { unreachable!("one input and the target") };
        let floats = self.pipeline.apply(img, draws).map_err(|e| e.to_string())?;
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

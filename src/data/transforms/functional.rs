//! The transforms' operations, each a pure function of an image and its parameters, as
//! torchvision's `transforms.v2.functional`: geometry on `image` crate buffers of any pixel
//! type (bytes or floats, gray or RGB), colour on float images in [0, 1], and the
//! conversion to the float `[C, H, W]` layout the model takes.
//!
//! Resampling is the `image` crate's: its `Triangle` filter is the bilinear kernel, widened
//! by the scale factor when the image shrinks, which is how torchvision's (and PIL's)
//! antialiased bilinear resize works. Colour follows torchvision's float kernels: the
//! same blends, the same luma weights (0.2989, 0.587, 0.114), in float32.

use image::imageops::{self, FilterType};
use image::{ImageBuffer, Pixel, Primitive};

use super::config::Size;

/// An image as the geometric operations take it: `P` is `Luma<u8>`, `Rgb<u8>`, `Luma<f32>`
/// or `Rgb<f32>`.
pub type Image<P> = ImageBuffer<P, Vec<<P as Pixel>::Subpixel>>;

/// The most pixels a resize that keeps the aspect ratio may make of one image (8192 x
/// 8192, the largest `data.image_size`): a 1 x 500 image resized to a smaller edge of 224
/// would be 224 x 112000.
pub const MAX_PIXELS: u64 = 8192 * 8192;

/// The luma weights of torchvision's `rgb_to_grayscale` (ITU-R 601-2, as torchvision
/// rounds them).
const LUMA: [f32; 3] = [0.2989, 0.587, 0.114];

/// A window of an image: its top-left corner and its size, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// The first row.
    pub top: i64,
    /// The first column.
    pub left: i64,
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
}

/// One `ColorJitter`'s draws: the order of its adjustments and their factors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JitterParams {
    /// The adjustments in the order they are made: 0 brightness, 1 contrast, 2 saturation.
    pub order: [usize; 3],
    /// The factors, in that numbering; `None` for an adjustment that is left out.
    pub factors: [Option<f64>; 3],
}

/// `[height, width]` of an image.
pub fn size_of<P: Pixel>(img: &Image<P>) -> [u32; 2] {
    [img.height(), img.width()]
}

/// `img` resized to `[height, width]` (bilinear, antialiased when it shrinks); the image
/// itself when the size is already that.
pub fn resize<P: Pixel + 'static>(img: &Image<P>, [height, width]: [u32; 2]) -> Image<P> {
    imageops::resize(img, width, height, FilterType::Triangle)
}

/// The size torchvision's `Resize(size, max_size)` makes of an image of `[height, width]`:
/// `[h, w]` as given, or the smaller edge set to `n` and the longer one scaled in
/// proportion (rounded down), then both scaled down further if the longer one would pass
/// `max_size`. In `u64`, as a very long image can make sides beyond `u32`.
pub fn resized_size([height, width]: [u32; 2], size: Size, max_size: Option<u32>) -> [u64; 2] {
    let n = match size {
        Size::Pair([h, w]) => return [u64::from(h), u64::from(w)],
        Size::One(n) => u64::from(n),
    };
    let (short, long) = (u64::from(height.min(width)), u64::from(height.max(width)));
    // Python's int(n * long / short): the product exact, one rounding in the division, then
    // truncation; the same for max_size. A side that would round to 0 is 1 (torchvision
    // would fail on an empty image).
    let ratio = |a: u64, b: u64| ((a as f64 / b.max(1) as f64) as u64).max(1);
    let (mut new_short, mut new_long) = (n, ratio(n * long, short));
    if let Some(max) = max_size.map(u64::from).filter(|&max| new_long > max) {
        (new_short, new_long) = (ratio(max * new_short, new_long), max);
    }
    if width <= height {
        [new_long, new_short]
    } else {
        [new_short, new_long]
    }
}

/// The window `b` of `img`, with zeros where it lies outside the image (as torchvision's
/// `crop` pads).
pub fn crop<P: Pixel + 'static>(img: &Image<P>, b: CropBox) -> Image<P> {
    let inside = b.top >= 0
        && b.left >= 0
        && b.top as u64 + u64::from(b.height) <= u64::from(img.height())
        && b.left as u64 + u64::from(b.width) <= u64::from(img.width());
    if inside {
        return imageops::crop_imm(img, b.left as u32, b.top as u32, b.width, b.height).to_image();
    }
    let mut out = Image::<P>::new(b.width, b.height);
    imageops::replace(&mut out, img, -b.left, -b.top);
    out
}

/// The window of `[height, width]` at the centre of an image of `size`, as torchvision's
/// `center_crop` places it: zero padding split with the extra pixel after (right, bottom),
/// the offset of a larger image rounded half to even.
pub fn center_box(size: [u32; 2], [height, width]: [u32; 2]) -> CropBox {
    let start = |image: u32, crop: u32| -> i64 {
        let padded = image.max(crop);
        let pad_before = i64::from((padded - image) / 2);
        (f64::from(padded - crop) / 2.0).round_ties_even() as i64 - pad_before
    };
    CropBox { top: start(size[0], height), left: start(size[1], width), height, width }
}

/// torchvision's `center_crop`: the central `[height, width]`, padded with zeros where
/// the image is smaller.
pub fn center_crop<P: Pixel + 'static>(img: &Image<P>, size: [u32; 2]) -> Image<P> {
    crop(img, center_box(size_of(img), size))
}

/// The mirror image (columns reversed).
pub fn hflip<P: Pixel + 'static>(img: &Image<P>) -> Image<P> {
    imageops::flip_horizontal(img)
}

/// Bytes in [0, 255] as floats in [0, 1] (`x / 255`, as the loader has always divided).
pub fn to_float<P>(img: &ImageBuffer<P, Vec<u8>>) -> ImageBuffer<P::Float, Vec<f32>>
where
    P: Pixel<Subpixel = u8> + FloatPixel,
{
    let data = img.as_raw().iter().map(|&b| f32::from(b) / 255.0).collect();
    ImageBuffer::from_raw(img.width(), img.height(), data).expect("one float per byte")
}

/// The float pixel type of a byte pixel type.
pub trait FloatPixel {
    /// `Luma<f32>` for `Luma<u8>`, `Rgb<f32>` for `Rgb<u8>`.
    type Float: Pixel<Subpixel = f32> + 'static;
}

impl FloatPixel for image::Luma<u8> {
    type Float = image::Luma<f32>;
}

impl FloatPixel for image::Rgb<u8> {
    type Float = image::Rgb<f32>;
}

/// The planes of an image, channel after channel (`[C, H, W]`), as floats: bytes divided by
/// 255, floats as they are.
pub fn to_chw<P>(img: &Image<P>) -> Vec<f32>
where
    P: Pixel,
    P::Subpixel: Primitive + Into<f64>,
{
    let channels = usize::from(P::CHANNEL_COUNT);
    let plane = img.width() as usize * img.height() as usize;
    // 255 for bytes, 1 for floats (x / 1 is x exactly).
    let scale = P::Subpixel::DEFAULT_MAX_VALUE.into() as f32;
    let mut out = vec![0f32; channels * plane];
    for (i, pixel) in img.as_raw().chunks_exact(channels).enumerate() {
        for (c, &v) in pixel.iter().enumerate() {
            out[c * plane + i] = v.into() as f32 / scale;
        }
    }
    out
}

/// torchvision's `_blend` on floats: `x * ratio + other * (1 - ratio)`, clamped to [0, 1],
/// in float32 as torch computes it.
fn blend(x: f32, other: f32, ratio: f64) -> f32 {
    (x * ratio as f32 + other * (1.0 - ratio) as f32).clamp(0.0, 1.0)
}

/// The gray level of each pixel: the pixel itself for one channel, else the luma.
fn gray<P: Pixel<Subpixel = f32>>(img: &Image<P>) -> impl Iterator<Item = f32> + '_ {
    img.as_raw().chunks_exact(usize::from(P::CHANNEL_COUNT)).map(|p| match p {
        [r, g, b] => r * LUMA[0] + g * LUMA[1] + b * LUMA[2],
        [l] => *l,
        _ => unreachable!("gray or RGB pixels"),
    })
}

/// torchvision's `adjust_brightness`: a blend with black.
pub fn adjust_brightness<P: Pixel<Subpixel = f32>>(img: &mut Image<P>, factor: f64) {
    for v in img.iter_mut() {
        *v = (*v * factor as f32).clamp(0.0, 1.0);
    }
}

/// torchvision's `adjust_contrast`: a blend with the mean gray level of the image.
pub fn adjust_contrast<P: Pixel<Subpixel = f32>>(img: &mut Image<P>, factor: f64) {
    let n = u64::from(img.width()) * u64::from(img.height());
    let mean = (gray(img).map(f64::from).sum::<f64>() / n.max(1) as f64) as f32;
    for v in img.iter_mut() {
        *v = blend(*v, mean, factor);
    }
}

/// torchvision's `adjust_saturation`: a blend of each pixel with its gray level; a gray
/// image is left as it is.
pub fn adjust_saturation<P: Pixel<Subpixel = f32>>(img: &mut Image<P>, factor: f64) {
    if P::CHANNEL_COUNT == 1 {
        return;
    }
    let levels: Vec<f32> = gray(img).collect();
    for (pixel, level) in img.pixels_mut().zip(levels) {
        for v in pixel.channels_mut() {
            *v = blend(*v, level, factor);
        }
    }
}

/// torchvision's `ColorJitter` with its draws made: the adjustments in their order.
pub fn color_jitter<P: Pixel<Subpixel = f32>>(mut img: Image<P>, params: &JitterParams) -> Image<P> {
    for &which in &params.order {
        match (which, params.factors[which]) {
            (0, Some(f)) => adjust_brightness(&mut img, f),
            (1, Some(f)) => adjust_contrast(&mut img, f),
            (2, Some(f)) => adjust_saturation(&mut img, f),
            _ => {}
        }
    }
    img
}

/// torchvision's `normalize` of `[C, H, W]` floats: `(x - mean) / std` per channel, in
/// float32; `mean` and `std` hold one value or one per channel.
pub fn normalize(chw: &mut [f32], channels: usize, mean: &[f64], std: &[f64]) {
    let plane = chw.len() / channels.max(1);
    for (c, values) in chw.chunks_mut(plane.max(1)).enumerate() {
        let pick = |v: &[f64]| v[if v.len() == 1 { 0 } else { c }] as f32;
        let (m, s) = (pick(mean), pick(std));
        for x in values {
            *x = (*x - m) / s;
        }
    }
}

#[cfg(test)]
mod tests {
    use image::{Luma, Rgb};

    use super::*;

    fn gray(width: u32, height: u32) -> Image<Luma<u8>> {
        ImageBuffer::from_fn(width, height, |x, y| Luma([(10 * y + x) as u8]))
    }

    #[test]
    fn center_crop_places_the_window_as_torchvision_does() {
        // Offsets (image - crop) / 2 rounded half to even: 5 -> 2 (2.5), 3 -> 2 (1.5).
        assert_eq!(center_box([10, 8], [5, 5]), CropBox { top: 2, left: 2, height: 5, width: 5 });
        // A crop larger than the image: padding (crop - image) // 2 before, the rest after.
        assert_eq!(center_box([2, 3], [5, 4]), CropBox { top: -1, left: 0, height: 5, width: 4 });
        let out = center_crop(&gray(3, 2), [5, 4]);
        let rows: Vec<Vec<u8>> = out.rows().map(|r| r.map(|p| p.0[0]).collect()).collect();
        assert_eq!(rows, [vec![0, 0, 0, 0], vec![0, 1, 2, 0], vec![10, 11, 12, 0], vec![0; 4], vec![0; 4]]);
    }

    #[test]
    fn crop_and_flip_move_pixels_exactly() {
        let img = gray(6, 4);
        let c = crop(&img, CropBox { top: 1, left: 2, height: 2, width: 3 });
        assert_eq!(c.as_raw(), &[12, 13, 14, 22, 23, 24]);
        assert_eq!(hflip(&c).as_raw(), &[14, 13, 12, 24, 23, 22]);
    }

    #[test]
    fn resized_sizes_follow_torchvision() {
        // The smaller edge to n, the other int(n * long / short).
        assert_eq!(resized_size([375, 500], Size::One(256), None), [256, 341]);
        assert_eq!(resized_size([500, 375], Size::One(256), None), [341, 256]);
        assert_eq!(resized_size([1, 500], Size::One(36), None), [36, 18000]);
        // max_size bounds the longer edge: int(max * short / long) for the other.
        assert_eq!(resized_size([1, 500], Size::One(36), Some(100)), [1, 100]);
        assert_eq!(resized_size([300, 400], Size::One(200), Some(250)), [187, 250]);
        assert_eq!(resized_size([3, 4], Size::Pair([5, 6]), None), [5, 6]);
    }

    #[test]
    fn colour_adjustments_are_torchvisions_blends() {
        let mut img: Image<Rgb<f32>> = ImageBuffer::from_raw(2, 1, vec![0.2, 0.4, 0.6, 1.0, 0.0, 0.5]).unwrap();
        adjust_brightness(&mut img, 1.5);
        assert_eq!(img.as_raw(), &[0.3, 0.6, 0.90000004, 1.0, 0.0, 0.75]);
        let mut img: Image<Rgb<f32>> = ImageBuffer::from_raw(1, 1, vec![0.2, 0.4, 0.6]).unwrap();
        adjust_saturation(&mut img, 0.0);
        let l = 0.2 * 0.2989 + 0.4 * 0.587 + 0.6 * 0.114;
        assert!(img.as_raw().iter().all(|v| (v - l).abs() < 1e-7), "{:?}", img.as_raw());
        let mut g: Image<Luma<f32>> = ImageBuffer::from_raw(2, 1, vec![0.2, 0.6]).unwrap();
        adjust_saturation(&mut g, 0.0);
        assert_eq!(g.as_raw(), &[0.2, 0.6]);
        adjust_contrast(&mut g, 0.0);
        assert_eq!(g.as_raw(), &[0.4, 0.4]);
    }
}

//! A list of transforms, checked once against the images it will take and the size the
//! model wants, then applied to one image at a time.

use image::{DynamicImage, GrayImage, Luma, Rgb, RgbImage};

use super::config::{Jitter, Size, Transform};
use super::draws::Draws;
use super::error::TransformError;
use super::functional::{self as f, Image, MAX_PIXELS};
use super::params::{crop_box, flips, jitter};

/// The largest side a transform's size may give, as for `data.image_size`.
pub const MAX_SIDE: u32 = 8192;

/// A checked list of transforms for images of `channels` that must come out at one size.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    transforms: Vec<Transform>,
    channels: u32,
    size: [u32; 2],
    /// Whether a transform sets the size; if none does, images are first resized to `size`.
    sized: bool,
}

/// An image between transforms: bytes until the first colour transform, floats in [0, 1]
/// from then on (as torchvision's float kernels take them).
enum Working {
    Gray8(GrayImage),
    Rgb8(RgbImage),
    GrayF(Image<Luma<f32>>),
    RgbF(Image<Rgb<f32>>),
}

/// `$e` applied to the image in `$w` whatever its pixel type, keeping that type.
macro_rules! each {
    ($w:expr, $x:ident => $e:expr) => {
        match $w {
            Working::Gray8($x) => Working::Gray8($e),
            Working::Rgb8($x) => Working::Rgb8($e),
            Working::GrayF($x) => Working::GrayF($e),
            Working::RgbF($x) => Working::RgbF($e),
        }
    };
}

impl Working {
    fn size(&self) -> [u32; 2] {
        match self {
            Self::Gray8(x) => f::size_of(x),
            Self::Rgb8(x) => f::size_of(x),
            Self::GrayF(x) => f::size_of(x),
            Self::RgbF(x) => f::size_of(x),
        }
    }

    fn jittered(self, p: &f::JitterParams) -> Self {
        match self {
            Self::Gray8(x) => Self::GrayF(f::color_jitter(f::to_float(&x), p)),
            Self::Rgb8(x) => Self::RgbF(f::color_jitter(f::to_float(&x), p)),
            Self::GrayF(x) => Self::GrayF(f::color_jitter(x, p)),
            Self::RgbF(x) => Self::RgbF(f::color_jitter(x, p)),
        }
    }

    fn into_chw(self) -> Vec<f32> {
        match self {
            Self::Gray8(x) => f::to_chw(&x),
            Self::Rgb8(x) => f::to_chw(&x),
            Self::GrayF(x) => f::to_chw(&x),
            Self::RgbF(x) => f::to_chw(&x),
        }
    }
}

impl Pipeline {
    /// Checks `transforms` for images converted to `channels` (1 or 3) that must come out
    /// `image_size` (`[height, width]`): every parameter in its range, `Normalize` last and
    /// with one value or one per channel, and, if any transform sets the size, the last one
    /// to do so making every image `image_size`. Without such a transform images are
    /// resized to `image_size` first, as the loader has always done.
    pub fn new(transforms: &[Transform], image_size: [u32; 2], channels: u32) -> Result<Self, TransformError> {
        if !matches!(channels, 1 | 3) {
            return Err(TransformError::Channels(channels));
        }
        for (i, t) in transforms.iter().enumerate() {
            let invalid = |reason: String| TransformError::Invalid { index: i, name: t.name(), reason };
            check(t, channels).map_err(invalid)?;
            if matches!(t, Transform::Normalize(_)) && i + 1 < transforms.len() {
                return Err(invalid(
                    "must be the last transform: it moves values out of [0, 1], where the others work".into(),
                ));
            }
        }
        // The size every image has after each transform; `None` while it follows the image.
        let mut size = None;
        let mut last = None;
        for (i, t) in transforms.iter().enumerate() {
            size = match t {
                Transform::Resize(r) => match r.size {
                    Size::Pair(hw) => Some(hw),
                    // Known only when the size before it is (a crop's, say).
                    Size::One(_) => size.map(|s| {
                        f::resized_size(s, r.size, r.max_size).map(|side| side.min(u64::from(u32::MAX)) as u32)
                    }),
                },
                Transform::RandomResizedCrop(r) => Some(r.size.square_or_exact()),
                Transform::CenterCrop(c) => Some(c.size.square_or_exact()),
                _ => continue,
            };
            last = Some((i, t.name()));
        }
        match (last, size) {
            (Some((index, name)), None) => return Err(TransformError::VaryingSize { index, name, image_size }),
            (Some((index, name)), Some(s)) if s != image_size => {
                return Err(TransformError::WrongSize { index, name, size: s, image_size })
            }
            _ => {}
        }
        Ok(Self { transforms: transforms.to_vec(), channels, size: image_size, sized: last.is_some() })
    }

    /// `[channels, height, width]` of every image that comes out.
    pub fn output_shape(&self) -> [usize; 3] {
        [self.channels as usize, self.size[0] as usize, self.size[1] as usize]
    }

    /// Whether the output depends on the draws (a random transform is in the list).
    pub fn is_random(&self) -> bool {
        self.transforms.iter().any(|t| {
            matches!(
                t,
                Transform::RandomResizedCrop(_) | Transform::RandomHorizontalFlip(_) | Transform::ColorJitter(_)
            )
        })
    }

    /// `image`, converted to the pipeline's channels (as the loader converts: `into_rgb8`
    /// or `into_luma8`), through every transform, as float32 `[C, H, W]` of
    /// [`Pipeline::output_shape`]: values in [0, 1] (bytes / 255) unless `Normalize` moved
    /// them. The random transforms draw from `draws`, in list order.
    pub fn apply(&self, image: DynamicImage, mut draws: Draws) -> Result<Vec<f32>, TransformError> {
        if image.width() == 0 || image.height() == 0 {
            return Err(TransformError::Empty { width: image.width(), height: image.height() });
        }
        let mut img = match self.channels {
            1 => Working::Gray8(image.into_luma8()),
            _ => Working::Rgb8(image.into_rgb8()),
        };
        if !self.sized {
            img = each!(img, x => f::resize(&x, self.size));
        }
        let mut normalize = None;
        for (i, t) in self.transforms.iter().enumerate() {
            img = match t {
                Transform::Resize(r) => {
                    let [h, w] = f::resized_size(img.size(), r.size, r.max_size);
                    if h.saturating_mul(w) > MAX_PIXELS {
                        return Err(TransformError::TooLarge { index: i, name: t.name(), width: w, height: h });
                    }
                    each!(img, x => f::resize(&x, [h as u32, w as u32]))
                }
                Transform::CenterCrop(c) => each!(img, x => f::center_crop(&x, c.size.square_or_exact())),
                Transform::RandomResizedCrop(r) => {
                    let b = crop_box(r, img.size(), &mut draws);
                    each!(img, x => f::resize(&f::crop(&x, b), r.size.square_or_exact()))
                }
                Transform::RandomHorizontalFlip(r) if flips(r.p, &mut draws) => each!(img, x => f::hflip(&x)),
                Transform::RandomHorizontalFlip(_) => img,
                Transform::ColorJitter(j) => img.jittered(&jitter(j, &mut draws)),
                Transform::Normalize(n) => {
                    normalize = Some(n);
                    img
                }
            };
        }
        let mut chw = img.into_chw();
        if let Some(n) = normalize {
            f::normalize(&mut chw, self.channels as usize, &n.mean, &n.std);
        }
        Ok(chw)
    }
}

/// What is wrong with one transform's parameters, for images of `channels`.
fn check(t: &Transform, channels: u32) -> Result<(), String> {
    let size = |s: Size| match s {
        Size::One(n) if (1..=MAX_SIDE).contains(&n) => Ok(()),
        Size::Pair([h, w]) if (1..=MAX_SIDE).contains(&h) && (1..=MAX_SIDE).contains(&w) => Ok(()),
        _ => Err(format!("size must be 1 to {MAX_SIDE} pixels a side, got {s}")),
    };
    let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
    match t {
        Transform::RandomResizedCrop(r) => {
            size(r.size)?;
            let [lo, hi] = r.scale;
            if !(finite(&r.scale) && 0.0 < lo && lo <= hi && hi <= 1.0) {
                return Err(format!(
                    "scale must be [low, high], shares of the image's area with 0 < low <= high <= 1, got [{lo}, {hi}]"
                ));
            }
            let [lo, hi] = r.ratio;
            if !(finite(&r.ratio) && 0.0 < lo && lo <= hi) {
                return Err(format!(
                    "ratio must be [low, high], width / height with 0 < low <= high, got [{lo}, {hi}]"
                ));
            }
        }
        Transform::RandomHorizontalFlip(r) if !(0.0..=1.0).contains(&r.p) => {
            return Err(format!("p must be in [0, 1], got {}", r.p));
        }
        Transform::Resize(r) => {
            size(r.size)?;
            match (r.size, r.max_size) {
                (Size::Pair(_), Some(_)) => {
                    return Err(
                        "max_size applies only to a one-number size (the smaller edge), as in torchvision".into()
                    )
                }
                (Size::One(n), Some(max)) if max <= n => {
                    return Err(format!("max_size ({max}) must be greater than size ({n})"));
                }
                _ => {}
            }
        }
        Transform::CenterCrop(c) => size(c.size)?,
        Transform::Normalize(n) => {
            for (key, values) in [("mean", &n.mean), ("std", &n.std)] {
                if !(values.len() == 1 || values.len() == channels as usize) {
                    return Err(format!(
                        "{key} has {} values: give one, or one per channel (data.channels is {channels})",
                        values.len()
                    ));
                }
                if !finite(values) {
                    return Err(format!("{key} must hold finite numbers, got {values:?}"));
                }
            }
            if n.std.contains(&0.0) {
                return Err(format!("std must not be 0 (it divides), got {:?}", n.std));
            }
        }
        Transform::ColorJitter(j) => {
            for (key, jitter) in [("brightness", j.brightness), ("contrast", j.contrast), ("saturation", j.saturation)]
            {
                match jitter {
                    Jitter::One(x) if !(x.is_finite() && x >= 0.0) => {
                        return Err(format!("{key} must be a number >= 0, got {x}"));
                    }
                    Jitter::Pair([lo, hi]) if !(finite(&[lo, hi]) && 0.0 <= lo && lo <= hi) => {
                        return Err(format!("{key} must be [low, high] with 0 <= low <= high, got [{lo}, {hi}]"));
                    }
                    _ => {}
                }
            }
        }
        Transform::RandomHorizontalFlip(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use image::imageops::FilterType;

    use super::*;
    use crate::data::transforms::config::{
        CenterCrop, ColorJitter, Normalize, RandomHorizontalFlip, RandomResizedCrop, Resize,
    };

    /// An image with detail everywhere, so that any two different crops differ.
    fn textured(width: u32, height: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x * 37 + y * 11) as u8, (x * x + 3 * y) as u8, ((x ^ y) * 5) as u8])
        }))
    }

    fn rrc(size: u32, scale: [f64; 2], ratio: [f64; 2]) -> Transform {
        Transform::RandomResizedCrop(RandomResizedCrop { size: Size::One(size), scale, ratio })
    }

    fn flip(p: f64) -> Transform {
        Transform::RandomHorizontalFlip(RandomHorizontalFlip { p })
    }

    fn resize(size: Size) -> Transform {
        Transform::Resize(Resize { size, max_size: None })
    }

    fn center(n: u32) -> Transform {
        Transform::CenterCrop(CenterCrop { size: Size::One(n) })
    }

    fn normalize(mean: &[f64], std: &[f64]) -> Transform {
        Transform::Normalize(Normalize { mean: mean.to_vec(), std: std.to_vec() })
    }

    fn jitter(b: f64, c: f64, s: f64) -> Transform {
        Transform::ColorJitter(ColorJitter {
            brightness: Jitter::One(b),
            contrast: Jitter::One(c),
            saturation: Jitter::One(s),
        })
    }

    fn train_list() -> Vec<Transform> {
        vec![rrc(32, [0.08, 1.0], [0.75, 4.0 / 3.0]), flip(0.5), jitter(0.4, 0.4, 0.4), normalize(&[0.5], &[0.5])]
    }

    fn run(list: &[Transform], channels: u32, img: &DynamicImage, (seed, epoch, index): (u64, u32, u64)) -> Vec<f32> {
        let p = Pipeline::new(list, [32, 32], channels).unwrap();
        let out = p.apply(img.clone(), Draws::new(seed, epoch, index)).unwrap();
        assert_eq!(out.len(), p.output_shape().iter().product::<usize>());
        assert!(out.iter().all(|v| v.is_finite()));
        out
    }

    /// What the loader's `decode` makes of an image: resized RGB bytes / 255, planes.
    fn loader_pixels(img: &DynamicImage, [h, w]: [u32; 2]) -> Vec<f32> {
        let rgb = image::imageops::resize(&img.to_rgb8(), w, h, FilterType::Triangle);
        let plane = (h * w) as usize;
        let mut out = vec![0f32; 3 * plane];
        for (i, p) in rgb.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = f32::from(p.0[c]) / 255.0;
            }
        }
        out
    }

    #[test]
    fn an_empty_list_gives_the_loaders_pixels() {
        let img = textured(57, 41);
        assert_eq!(run(&[], 3, &img, (0, 0, 0)), loader_pixels(&img, [32, 32]));
        assert!(!Pipeline::new(&[], [32, 32], 3).unwrap().is_random());
    }

    #[test]
    fn the_same_seed_epoch_and_index_give_the_same_pixels_and_others_others() {
        let img = textured(80, 60);
        let list = train_list();
        let a = run(&list, 3, &img, (7, 2, 11));
        assert_eq!(a, run(&list, 3, &img, (7, 2, 11)));
        assert_ne!(a, run(&list, 3, &img, (7, 3, 11)), "another epoch");
        assert_ne!(a, run(&list, 3, &img, (7, 2, 12)), "another example");
        assert_ne!(a, run(&list, 3, &img, (8, 2, 11)), "another seed");
        let crops: std::collections::HashSet<Vec<u32>> = (0..20)
            .map(|epoch| run(&list[..1], 3, &img, (7, epoch, 11)).iter().map(|v| v.to_bits()).collect())
            .collect();
        assert!(crops.len() > 15, "the crop changes from epoch to epoch: {} distinct of 20", crops.len());
    }

    #[test]
    fn scale_one_at_the_images_own_ratio_is_a_resize_of_the_whole_image() {
        let img = textured(48, 30);
        let r = 48.0 / 30.0;
        let cropped = run(&[rrc(32, [1.0, 1.0], [r, r])], 3, &img, (1, 0, 5));
        assert_eq!(cropped, run(&[resize(Size::Pair([32, 32]))], 3, &img, (1, 0, 5)));
    }

    #[test]
    fn flip_probability_zero_never_flips_and_one_always_does() {
        let img = textured(40, 32);
        let plain = run(&[], 3, &img, (0, 0, 0));
        let flipped = run(&[flip(1.0)], 3, &img, (0, 0, 0));
        for index in 0..20 {
            assert_eq!(run(&[flip(0.0)], 3, &img, (0, 0, index)), plain);
            assert_eq!(run(&[flip(1.0)], 3, &img, (0, 0, index)), flipped);
        }
        // Row 0 of the red plane, reversed.
        let row: Vec<f32> = plain[..32].iter().rev().copied().collect();
        assert_eq!(flipped[..32], row[..]);
    }

    #[test]
    fn tiny_and_very_long_images_go_through_every_list() {
        let eval = [resize(Size::One(36)), center(32), normalize(&[0.5], &[0.25])];
        for (w, h) in [(1, 1), (1, 500), (500, 1), (3, 2)] {
            for channels in [1, 3] {
                let img = textured(w, h);
                for index in 0..10 {
                    run(&train_list(), channels, &img, (0, 0, index));
                }
                // Resize(36) of 1 x 500 is 36 x 18000 (648000 pixels): allowed.
                run(&eval, channels, &img, (0, 0, 0));
            }
        }
    }

    #[test]
    fn gray_images_come_out_one_plane_and_colour_three() {
        let img = textured(20, 20);
        let list = [jitter(0.5, 0.5, 0.5), center(32)];
        assert_eq!(run(&list, 1, &img, (0, 0, 0)).len(), 32 * 32);
        assert_eq!(run(&list, 3, &img, (0, 0, 0)).len(), 3 * 32 * 32);
        // A jitter that leaves everything (all amounts 0) is the float conversion alone.
        assert_eq!(run(&[jitter(0.0, 0.0, 0.0)], 1, &img, (0, 0, 0)), run(&[], 1, &img, (0, 0, 0)));
    }

    #[test]
    fn normalize_maps_each_channel_with_its_mean_and_std() {
        let img = textured(32, 32);
        let plain = run(&[], 3, &img, (0, 0, 0));
        let out = run(&[normalize(&[0.1, 0.2, 0.3], &[0.5, 1.0, 2.0])], 3, &img, (0, 0, 0));
        let plane = 32 * 32;
        for (c, (m, s)) in [(0.1f32, 0.5f32), (0.2, 1.0), (0.3, 2.0)].into_iter().enumerate() {
            let i = c * plane + 17;
            assert_eq!(out[i], (plain[i] - m) / s);
        }
    }

    #[test]
    fn colour_before_geometry_resamples_floats() {
        let img = textured(64, 48);
        let out = run(&[jitter(0.3, 0.0, 0.0), rrc(32, [0.5, 1.0], [0.75, 4.0 / 3.0]), flip(0.5)], 3, &img, (0, 0, 0));
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn an_empty_image_is_refused() {
        let p = Pipeline::new(&[], [32, 32], 3).unwrap();
        let e = p.apply(DynamicImage::new_rgb8(0, 5), Draws::new(0, 0, 0)).unwrap_err();
        assert_eq!(e.to_string(), "the image is empty (0x5)");
    }

    #[test]
    fn a_resize_that_would_make_an_image_too_large_is_refused_unless_bounded() {
        let list = [resize(Size::One(8192)), center(32)];
        let p = Pipeline::new(&list, [32, 32], 1).unwrap();
        let e = p.apply(textured(1, 5000).clone(), Draws::new(0, 0, 0)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Resize at index 0 would make this image 8192x40960000, more than 67108864 pixels; give it a max_size"
        );
        let bounded = [Transform::Resize(Resize { size: Size::One(30), max_size: Some(64) }), center(32)];
        run(&bounded, 1, &textured(1, 5000), (0, 0, 0));
    }

    fn refusal(list: &[Transform], channels: u32) -> String {
        Pipeline::new(list, [32, 32], channels).unwrap_err().to_string()
    }

    #[test]
    fn every_refusal_names_the_transform_and_says_what_is_wrong() {
        let cases: Vec<(Vec<Transform>, &str)> = vec![
            (vec![flip(1.5)], "RandomHorizontalFlip at index 0: p must be in [0, 1], got 1.5"),
            (vec![flip(f64::NAN)], "RandomHorizontalFlip at index 0: p must be in [0, 1], got NaN"),
            (
                vec![flip(0.5), rrc(32, [0.9, 0.5], [0.75, 1.0])],
                "RandomResizedCrop at index 1: scale must be [low, high], shares of the image's area with 0 < low <= \
                 high <= 1, got [0.9, 0.5]",
            ),
            (
                vec![rrc(32, [0.0, 0.5], [0.75, 1.0])],
                "RandomResizedCrop at index 0: scale must be [low, high], shares of the image's area with 0 < low <= \
                 high <= 1, got [0, 0.5]",
            ),
            (
                vec![rrc(32, [0.5, 1.0], [2.0, 1.0])],
                "RandomResizedCrop at index 0: ratio must be [low, high], width / height with 0 < low <= high, got [2, 1]",
            ),
            (
                vec![rrc(32, [0.5, 1.0], [-1.0, 1.0])],
                "RandomResizedCrop at index 0: ratio must be [low, high], width / height with 0 < low <= high, got [-1, 1]",
            ),
            (vec![rrc(0, [0.5, 1.0], [1.0, 1.0])], "RandomResizedCrop at index 0: size must be 1 to 8192 pixels a side, got 0"),
            (vec![resize(Size::Pair([32, 9000]))], "Resize at index 0: size must be 1 to 8192 pixels a side, got [32, 9000]"),
            (
                vec![Transform::Resize(Resize { size: Size::Pair([32, 32]), max_size: Some(40) })],
                "Resize at index 0: max_size applies only to a one-number size (the smaller edge), as in torchvision",
            ),
            (
                vec![Transform::Resize(Resize { size: Size::One(32), max_size: Some(32) }), center(32)],
                "Resize at index 0: max_size (32) must be greater than size (32)",
            ),
            (
                vec![normalize(&[0.5, 0.5], &[0.5])],
                "Normalize at index 0: mean has 2 values: give one, or one per channel (data.channels is 3)",
            ),
            (vec![normalize(&[0.5], &[0.5, 0.5, 0.5])], "Normalize at index 0: std has 3 values: give one, or one per channel (data.channels is 1)"),
            (vec![normalize(&[0.5], &[0.0])], "Normalize at index 0: std must not be 0 (it divides), got [0.0]"),
            (vec![normalize(&[f64::INFINITY], &[1.0])], "Normalize at index 0: mean must hold finite numbers, got [inf]"),
            (
                vec![normalize(&[0.5], &[0.5]), flip(0.5)],
                "Normalize at index 0: must be the last transform: it moves values out of [0, 1], where the others work",
            ),
            (vec![jitter(-0.1, 0.0, 0.0)], "ColorJitter at index 0: brightness must be a number >= 0, got -0.1"),
            (
                vec![Transform::ColorJitter(ColorJitter { saturation: Jitter::Pair([1.5, 0.5]), ..ColorJitter::default() })],
                "ColorJitter at index 0: saturation must be [low, high] with 0 <= low <= high, got [1.5, 0.5]",
            ),
            (
                vec![resize(Size::One(32))],
                "Resize at index 0 sets only the smaller edge, so images come out in sizes that follow their aspect \
                 ratios: end the list with CenterCrop or RandomResizedCrop, or give Resize a [height, width], so that \
                 every image comes out data.image_size [32, 32]",
            ),
            (
                vec![center(28), flip(0.5)],
                "CenterCrop at index 0 makes images [28, 28] (height, width), but data.image_size is [32, 32]: make the \
                 last size [32, 32] or set data.image_size to [28, 28]",
            ),
        ];
        for (list, message) in cases {
            let channels = if message.contains("data.channels is 1") { 1 } else { 3 };
            assert_eq!(refusal(&list, channels), message);
        }
        assert_eq!(
            Pipeline::new(&[], [32, 32], 4).unwrap_err().to_string(),
            "images of 4 channels cannot be transformed: 1 (grayscale) or 3 (RGB)"
        );
    }

    #[test]
    fn the_last_transform_that_sets_the_size_decides_it() {
        // A smaller-edge Resize after a square crop is a fixed size again.
        assert!(Pipeline::new(&[center(64), resize(Size::One(32))], [32, 32], 3).is_ok());
        assert!(Pipeline::new(&[resize(Size::One(40)), resize(Size::Pair([32, 32]))], [32, 32], 3).is_ok());
        let p = Pipeline::new(&[resize(Size::One(36)), center(32), normalize(&[0.5], &[0.5])], [32, 32], 3).unwrap();
        assert_eq!((p.output_shape(), p.is_random()), ([3, 32, 32], false));
    }
}

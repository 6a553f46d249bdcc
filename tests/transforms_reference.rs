//! Our transforms against torchvision's `transforms.v2` on the same images: the pipeline's
//! deterministic transforms (Resize, CenterCrop, RandomHorizontalFlip with p = 1,
//! Normalize, ColorJitter with one-point ranges), RandomResizedCrop's resize of a given
//! box, and ColorJitter's adjustments in a given order. The reference outputs come from
//! tests/reference/transforms_reference.py, run afresh with the torch virtualenv.

mod common;

use std::collections::BTreeMap;

use image::{DynamicImage, GrayImage, Luma, Rgb, RgbImage};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;
use train::data::transforms::functional::{self as f, CropBox, JitterParams};
use train::data::transforms::{Draws, Pipeline, Transform};

/// Resampling: `image`'s separable triangle filter (f32 weights, vertical pass first, one
/// rounding to bytes at the end) against torchvision's uint8 kernel (fixed-point weights,
/// horizontal pass first, rounding between the passes). The same kernel, support and
/// grid, so outputs differ only by rounding: at most one byte step (1/255). Measured with
/// torchvision 0.26: max 1/255 in every resampling case, mean at most 7.7e-4 (a fifth of
/// the values one step off, on noise upscaled). The mean bound, 0.3 steps, catches a wrong
/// kernel, a missing antialias or a shifted grid, which move most values by several steps.
const RESAMPLE_MAX: f32 = 1.0 / 255.0 + 1e-6;
const RESAMPLE_MEAN: f32 = 0.3 / 255.0;
/// Colour: the same float32 formulas; torch fuses `a + alpha * b` (FMA) and sums the mean
/// for contrast in another order. Measured: at most 1.8e-7 (1.5 ulps of 1).
const COLOUR_MAX: f32 = 1e-6;

/// A deterministic xorshift stream for noise.
fn noise(seed: u64) -> impl FnMut() -> u8 {
    let mut s = seed;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 56) as u8
    }
}

fn images() -> BTreeMap<&'static str, DynamicImage> {
    let mut n = noise(0x9E37_79B9_7F4A_7C15);
    let noisy = RgbImage::from_fn(53, 37, |_, _| Rgb([n(), n(), n()]));
    // Smooth, photograph-like: gradients and slow waves.
    let smooth = RgbImage::from_fn(96, 64, |x, y| {
        let (x, y) = (x as f32, y as f32);
        let wave = |a: f32, b: f32| (127.5 + 127.0 * (a * x + b * y).sin()) as u8;
        Rgb([wave(0.11, 0.05), (x * 2.5) as u8, wave(-0.04, 0.17)])
    });
    let mut n = noise(7);
    let gray = GrayImage::from_fn(45, 30, |x, y| Luma([((x * 5 + y * 3) as u8).wrapping_add(n() / 4)]));
    let mut n = noise(11);
    let strip = RgbImage::from_fn(120, 7, |x, _| Rgb([n(), (x * 2) as u8, 255 - n() / 2]));
    BTreeMap::from([
        ("noisy", DynamicImage::ImageRgb8(noisy)),
        ("smooth", DynamicImage::ImageRgb8(smooth)),
        ("gray", DynamicImage::ImageLuma8(gray)),
        ("strip", DynamicImage::ImageRgb8(strip)),
    ])
}

/// How a case is judged.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Judge {
    Exact,
    Resample,
    Colour,
}

struct Case {
    spec: serde_json::Value,
    ours: Vec<f32>,
    judge: Judge,
}

fn transforms(steps: serde_json::Value) -> Vec<Transform> {
    serde_json::from_value(steps).expect("the case's transforms parse")
}

fn channels(img: &DynamicImage) -> u32 {
    u32::from(img.color().channel_count())
}

fn pipeline_case(
    img: &'static str,
    images: &BTreeMap<&str, DynamicImage>,
    steps: serde_json::Value,
    size: [u32; 2],
    judge: Judge,
) -> Case {
    let list = transforms(steps.clone());
    let image = &images[img];
    let p = Pipeline::new(&list, size, channels(image)).unwrap();
    let ours = p.apply(image.clone(), Draws::new(0, 0, 0)).unwrap();
    Case { spec: json!({"kind": "pipeline", "image": img, "steps": steps}), ours, judge }
}

fn cases(images: &BTreeMap<&str, DynamicImage>) -> BTreeMap<String, Case> {
    let mut cases = BTreeMap::new();
    let mut add = |name: String, case: Case| assert!(cases.insert(name, case).is_none());
    let imagenet = json!({"Normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}});
    for img in ["noisy", "smooth", "gray", "strip"] {
        let rgb = img != "gray";
        let p = |steps, size, judge| pipeline_case(img, images, steps, size, judge);
        add(format!("{img}/resize_down"), p(json!([{"Resize": {"size": [20, 27]}}]), [20, 27], Judge::Resample));
        add(format!("{img}/resize_up"), p(json!([{"Resize": {"size": [80, 130]}}]), [80, 130], Judge::Resample));
        add(
            format!("{img}/resize_edge_center_crop"),
            p(json!([{"Resize": {"size": 24}}, {"CenterCrop": {"size": 24}}]), [24, 24], Judge::Resample),
        );
        add(
            format!("{img}/resize_max_size_center_crop"),
            p(json!([{"Resize": {"size": 10, "max_size": 40}}, {"CenterCrop": {"size": 8}}]), [8, 8], Judge::Resample),
        );
        add(
            format!("{img}/center_crop_padded"),
            p(json!([{"CenterCrop": {"size": [41, 33]}}]), [41, 33], Judge::Exact),
        );
        add(
            format!("{img}/flip_center_crop"),
            p(json!([{"RandomHorizontalFlip": {"p": 1.0}}, {"CenterCrop": {"size": [6, 25]}}]), [6, 25], Judge::Exact),
        );
        let norm = if rgb { imagenet.clone() } else { json!({"Normalize": {"mean": [0.5], "std": [0.25]}}) };
        add(
            format!("{img}/center_crop_normalize"),
            p(json!([{"CenterCrop": {"size": 5}}, norm]), [5, 5], Judge::Exact),
        );
        add(
            format!("{img}/jitter_brightness"),
            p(json!([{"CenterCrop": {"size": 6}}, {"ColorJitter": {"brightness": [1.3, 1.3]}}]), [6, 6], Judge::Colour),
        );
        add(
            format!("{img}/jitter_contrast"),
            p(json!([{"CenterCrop": {"size": 6}}, {"ColorJitter": {"contrast": [0.4, 0.4]}}]), [6, 6], Judge::Colour),
        );
        add(
            format!("{img}/jitter_saturation"),
            p(json!([{"CenterCrop": {"size": 6}}, {"ColorJitter": {"saturation": [1.8, 1.8]}}]), [6, 6], Judge::Colour),
        );

        // RandomResizedCrop once its box is drawn: crop, then the antialiased resize.
        let image = &images[img];
        let [h, w] = [image.height(), image.width()];
        for (k, (top, left, bh, bw, size)) in
            [(1, 2, h - 3, w - 5, [16, 16]), (0, w / 3, h.min(5), w / 2, [24, 12]), (0, 0, h, w, [7, 9])]
                .into_iter()
                .enumerate()
        {
            let b = CropBox { top: i64::from(top), left: i64::from(left), height: bh, width: bw };
            let ours = if rgb {
                f::to_chw(&f::resize(&f::crop(&image.to_rgb8(), b), size))
            } else {
                f::to_chw(&f::resize(&f::crop(&image.to_luma8(), b), size))
            };
            let spec = json!({"kind": "resized_crop", "image": img, "box": [top, left, bh, bw], "size": size});
            add(format!("{img}/resized_crop_{k}"), Case { spec, ours, judge: Judge::Resample });
        }

        // ColorJitter's three adjustments in a drawn order.
        for (k, params) in [
            JitterParams { order: [2, 0, 1], factors: [Some(0.8), Some(1.25), Some(0.5)] },
            JitterParams { order: [1, 2, 0], factors: [Some(1.6), Some(0.0), Some(1.9)] },
            JitterParams { order: [0, 1, 2], factors: [None, Some(2.5), None] },
        ]
        .into_iter()
        .enumerate()
        {
            let ours = if rgb {
                f::to_chw(&f::color_jitter(f::to_float(&image.to_rgb8()), &params))
            } else {
                f::to_chw(&f::color_jitter(f::to_float(&image.to_luma8()), &params))
            };
            let spec = json!({"kind": "jitter", "image": img, "order": params.order, "factors": params.factors});
            add(format!("{img}/jitter_{k}"), Case { spec, ours, judge: Judge::Colour });
        }
    }
    cases
}

/// An image's bytes, `[C, H, W]`, and that shape.
type Chw = (Vec<u8>, Vec<usize>);

/// `img` as uint8 `[C, H, W]`, as torchvision holds images.
fn chw_bytes(img: &DynamicImage) -> Chw {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let c = channels(img) as usize;
    let raw = img.as_bytes();
    let mut out = vec![0u8; raw.len()];
    for (i, px) in raw.chunks_exact(c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            out[ch * h * w + i] = v;
        }
    }
    (out, vec![c, h, w])
}

#[test]
fn transforms_match_torchvision() {
    let dir = tempfile::tempdir().unwrap();
    let images = images();
    let cases = cases(&images);
    let bytes: Vec<(String, Chw)> = images.iter().map(|(name, img)| (name.to_string(), chw_bytes(img))).collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(name, (data, shape))| (name.clone(), TensorView::new(Dtype::U8, shape.clone(), data).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("inputs.safetensors")).unwrap();
    let specs: serde_json::Map<String, serde_json::Value> =
        cases.iter().map(|(name, c)| (name.clone(), c.spec.clone())).collect();
    std::fs::write(dir.path().join("cases.json"), serde_json::to_vec(&specs).unwrap()).unwrap();

    common::run_python(
        &common::repo().join("tests/reference/transforms_reference.py"),
        &[dir.path().to_str().unwrap()],
    );

    let file = std::fs::read(dir.path().join("reference.safetensors")).unwrap();
    let reference = safetensors::SafeTensors::deserialize(&file).unwrap();
    let mut worst: BTreeMap<String, (f32, f32)> = BTreeMap::new();
    let mut failures = Vec::new();
    eprintln!("{:<40} {:>12} {:>12}  (|ours - torchvision|, [0, 1] units)", "case", "mean", "max");
    for (name, case) in &cases {
        let theirs = reference.tensor(name).unwrap();
        let theirs: Vec<f32> =
            theirs.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        assert_eq!(
            theirs.len(),
            case.ours.len(),
            "{name}: {} values against torchvision's {}",
            case.ours.len(),
            theirs.len()
        );
        let diffs: Vec<f32> = case.ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).collect();
        let max = diffs.iter().copied().fold(0.0, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        eprintln!("{name:<40} {mean:>12.3e} {max:>12.3e}");
        let w = worst.entry(format!("{:?}", case.judge)).or_default();
        *w = (w.0.max(mean), w.1.max(max));
        let ok = match case.judge {
            Judge::Exact => case.ours.iter().zip(&theirs).all(|(a, b)| a.to_bits() == b.to_bits()),
            Judge::Resample => max <= RESAMPLE_MAX && mean <= RESAMPLE_MEAN,
            Judge::Colour => max <= COLOUR_MAX,
        };
        if !ok {
            failures.push(format!("{name} ({:?}): mean {mean:.3e}, max {max:.3e}", case.judge));
        }
    }
    eprintln!("worst per kind (mean, max): {worst:?}");
    assert!(failures.is_empty(), "outside the tolerance:\n{}", failures.join("\n"));
}

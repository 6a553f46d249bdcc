//! The random parameters of the random transforms, drawn as torchvision's `make_params`
//! draws them: the same algorithm, the same fallbacks, from our own stream ([`Draws`]).

use super::config::{ColorJitter, RandomResizedCrop};
use super::draws::Draws;
use super::functional::{CropBox, JitterParams};

/// The tries at a crop of the drawn area and ratio before falling back to a central one,
/// torchvision's 10.
const CROP_TRIES: usize = 10;

/// torchvision's `RandomResizedCrop.make_params` for an image of `[height, width]`: up to
/// ten tries at an area drawn uniformly from `scale` of the image's and a ratio drawn
/// log-uniformly from `ratio`, the first that fits placed uniformly at random; else the
/// central crop of the whole image, cut to the nearest allowed ratio. Sides are rounded
/// half to even, as Python's `round`; a fallback side that would round to 0 is 1
/// (torchvision would make an empty crop).
pub(super) fn crop_box(t: &RandomResizedCrop, [height, width]: [u32; 2], draws: &mut Draws) -> CropBox {
    let area = f64::from(height) * f64::from(width);
    let log_ratio = [t.ratio[0].ln(), t.ratio[1].ln()];
    for _ in 0..CROP_TRIES {
        let target_area = area * draws.uniform(t.scale[0], t.scale[1]);
        let aspect = draws.uniform(log_ratio[0], log_ratio[1]).exp();
        let w = (target_area * aspect).sqrt().round_ties_even();
        let h = (target_area / aspect).sqrt().round_ties_even();
        if 0.0 < w && w <= f64::from(width) && 0.0 < h && h <= f64::from(height) {
            let (h, w) = (h as u32, w as u32);
            let top = draws.below(height - h + 1);
            let left = draws.below(width - w + 1);
            return CropBox { top: i64::from(top), left: i64::from(left), height: h, width: w };
        }
    }
    let in_ratio = f64::from(width) / f64::from(height);
    let side = |x: f64| (x.round_ties_even() as u32).max(1);
    let (h, w) = if in_ratio < t.ratio[0] {
        (side(f64::from(width) / t.ratio[0]), width)
    } else if in_ratio > t.ratio[1] {
        (height, side(f64::from(height) * t.ratio[1]))
    } else {
        (height, width)
    };
    CropBox { top: i64::from((height - h) / 2), left: i64::from((width - w) / 2), height: h, width: w }
}

/// Whether `RandomHorizontalFlip(p)` flips: a draw in [0, 1) below `p`, so `p = 0` never
/// does and `p = 1` always does, as torchvision's `rand(1) < p`.
pub(super) fn flips(p: f64, draws: &mut Draws) -> bool {
    draws.unit() < p
}

/// torchvision's `ColorJitter.make_params`: a random order, then each configured factor
/// drawn uniformly from its range (brightness, contrast, saturation).
pub(super) fn jitter(t: &ColorJitter, draws: &mut Draws) -> JitterParams {
    let order = draws.permutation::<3>();
    let factors = [t.brightness, t.contrast, t.saturation].map(|j| j.range().map(|[lo, hi]| draws.uniform(lo, hi)));
    JitterParams { order, factors }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::transforms::config::{Jitter, Size};

    fn rrc(scale: [f64; 2], ratio: [f64; 2]) -> RandomResizedCrop {
        RandomResizedCrop { size: Size::One(8), scale, ratio }
    }

    #[test]
    fn every_crop_box_lies_inside_the_image() {
        for (i, hw) in [[1, 1], [1, 500], [500, 1], [37, 53], [224, 224]].into_iter().enumerate() {
            for index in 0..200 {
                let b = crop_box(&rrc([0.08, 1.0], [0.75, 4.0 / 3.0]), hw, &mut Draws::new(i as u64, 0, index));
                assert!(b.top >= 0 && b.left >= 0 && b.height >= 1 && b.width >= 1, "{b:?}");
                assert!(b.top + i64::from(b.height) <= i64::from(hw[0]), "{hw:?}: {b:?}");
                assert!(b.left + i64::from(b.width) <= i64::from(hw[1]), "{hw:?}: {b:?}");
            }
        }
    }

    #[test]
    fn the_whole_image_at_its_own_ratio_and_scale_one() {
        let (h, w) = (30u32, 50u32);
        let r = f64::from(w) / f64::from(h);
        let b = crop_box(&rrc([1.0, 1.0], [r, r]), [h, w], &mut Draws::new(1, 2, 3));
        assert_eq!(b, CropBox { top: 0, left: 0, height: h, width: w });
    }

    #[test]
    fn a_ratio_no_try_can_meet_falls_back_to_torchvisions_central_crop() {
        // A 1 x 500 strip cannot hold a 3:4..4:3 crop of 8% or more; torchvision's fallback
        // keeps the height and cuts the width to the largest ratio: round(1 * 4/3) = 1.
        let b = crop_box(&rrc([0.08, 1.0], [0.75, 4.0 / 3.0]), [1, 500], &mut Draws::new(0, 0, 0));
        assert_eq!(b, CropBox { top: 0, left: 249, height: 1, width: 1 });
        let b = crop_box(&rrc([0.5, 1.0], [2.0, 2.0]), [100, 10], &mut Draws::new(0, 0, 0));
        assert_eq!(b, CropBox { top: 47, left: 0, height: 5, width: 10 });
        // A ratio so wide that the fallback's height would round to 0 gives 1 row.
        let b = crop_box(&rrc([1.0, 1.0], [100.0, 100.0]), [10, 20], &mut Draws::new(0, 0, 0));
        assert_eq!(b, CropBox { top: 4, left: 0, height: 1, width: 20 });
    }

    #[test]
    fn flip_probabilities_zero_and_one_are_never_and_always() {
        let mut d = Draws::new(3, 0, 0);
        assert!((0..1000).all(|_| !flips(0.0, &mut d)));
        assert!((0..1000).all(|_| flips(1.0, &mut d)));
        let heads = (0..10_000).filter(|_| flips(0.5, &mut d)).count();
        assert!((4_700..5_300).contains(&heads), "{heads}");
    }

    #[test]
    fn jitter_factors_come_from_torchvisions_ranges() {
        let t = ColorJitter {
            brightness: Jitter::One(0.4),
            contrast: Jitter::One(0.0),
            saturation: Jitter::Pair([0.2, 0.3]),
        };
        for index in 0..100 {
            let p = jitter(&t, &mut Draws::new(0, 0, index));
            assert!((0.6..1.4).contains(&p.factors[0].unwrap()));
            assert_eq!(p.factors[1], None);
            assert!((0.2..0.3).contains(&p.factors[2].unwrap()));
            let mut order = p.order;
            order.sort();
            assert_eq!(order, [0, 1, 2]);
        }
        // An amount above 1 cannot make a factor negative.
        assert_eq!(Jitter::One(1.5).range(), Some([0.0, 2.5]));
    }
}

//! The random draws of one example's transforms: a ChaCha8 stream keyed by
//! (seed, epoch, index), so an example's augmentation is the same after a resume and on any
//! rank or worker, and another one in each epoch.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The last 12 bytes of every key: no other use of `training.seed` keys ChaCha8 this way
/// (the epoch order seeds it with `seed_from_u64`), so these draws are drawn from a stream
/// of their own. The `1` is the scheme's version.
const DOMAIN: [u8; 12] = *b"train:augm:1";

/// The random draws of one example; see the module documentation of
/// [`crate::data::transforms`] for the scheme.
#[derive(Debug, Clone)]
pub struct Draws {
    rng: ChaCha8Rng,
}

impl Draws {
    /// The draws of example `index` (its index in its split, not its place in the epoch's
    /// order) in epoch `epoch` of a run seeded `seed`.
    pub fn new(seed: u64, epoch: u32, index: u64) -> Self {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..12].copy_from_slice(&epoch.to_le_bytes());
        key[12..20].copy_from_slice(&index.to_le_bytes());
        key[20..].copy_from_slice(&DOMAIN);
        Self { rng: ChaCha8Rng::from_seed(key) }
    }

    /// A number in [0, 1): the top 53 bits of the next 64-bit word.
    pub(super) fn unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A number in [lo, hi) (`lo` when they are equal).
    pub(super) fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// A whole number in `0..n` (`n` at least 1): the high word of the next 64-bit word
    /// times `n`, biased by less than n / 2^64, and always one word, so every draw takes
    /// the same share of the stream.
    pub(super) fn below(&mut self, n: u32) -> u32 {
        ((u128::from(self.rng.next_u64()) * u128::from(n)) >> 64) as u32
    }

    /// A random order of `0..N` (Fisher-Yates, from the last place down).
    pub(super) fn permutation<const N: usize>(&mut self) -> [usize; N] {
        let mut order: [usize; N] = std::array::from_fn(|i| i);
        for i in (1..N).rev() {
            order.swap(i, self.below(i as u32 + 1) as usize);
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(mut d: Draws) -> Vec<u64> {
        (0..4).map(|_| d.rng.next_u64()).collect()
    }

    #[test]
    fn each_seed_epoch_and_index_has_its_own_stream() {
        assert_eq!(words(Draws::new(1, 2, 3)), words(Draws::new(1, 2, 3)));
        let others = [Draws::new(0, 2, 3), Draws::new(1, 3, 3), Draws::new(1, 2, 4), Draws::new(1, 0, 0)];
        for other in others {
            assert_ne!(words(Draws::new(1, 2, 3)), words(other));
        }
    }

    #[test]
    fn the_scheme_is_pinned() {
        // A change here is a change of the scheme: augmentations after a resume would differ.
        let mut d = Draws::new(42, 0, 0);
        let drawn = (d.unit(), d.below(1000), d.permutation::<3>());
        assert_eq!(format!("{drawn:?}"), "(0.635519744655058, 560, [2, 1, 0])");
    }

    #[test]
    fn draws_stay_in_their_ranges() {
        let mut d = Draws::new(7, 1, 9);
        for _ in 0..1000 {
            let u = d.uniform(0.25, 0.5);
            assert!((0.25..0.5).contains(&u));
            assert!(d.below(3) < 3);
            assert_eq!(d.below(1), 0);
        }
        assert_eq!(d.uniform(2.0, 2.0), 2.0);
        let mut p = d.permutation::<3>();
        p.sort();
        assert_eq!(p, [0, 1, 2]);
    }
}

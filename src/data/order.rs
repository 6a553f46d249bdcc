//! The order examples are visited in: a pure function of (seed, epoch), computed position by
//! position in constant memory, and each rank's share of a batch.
//!
//! The order of an epoch is a keyed pseudo-random permutation of `0..n`: a six-round
//! Feistel network over the smallest power of four at least `n` (so its two halves have
//! the same width), walked back into `0..n` where it lands outside (the cycle walking of
//! format-preserving encryption: applying a permutation of the larger set until the value
//! falls in the smaller one is a permutation of the smaller one; the set is less than four
//! times `n`, so fewer than four steps are expected). The round keys are drawn from ChaCha8
//! seeded with `seed` on stream `epoch`. Holding no array of `n` indices, the order costs
//! the same few bytes for a thousand examples as for a billion, so streamed data sets keep
//! host memory independent of their size.

use rand::{RngCore, SeedableRng};

/// Rounds of the Feistel network.
const ROUNDS: usize = 6;

/// One epoch's order, cut into batches of `batch_size` (the last may be smaller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochOrder {
    n: u64,
    batch_size: usize,
    /// Bits of each half of the Feistel network's input.
    half_bits: u32,
    keys: [u64; ROUNDS],
}

impl EpochOrder {
    /// The order of epoch `epoch` of `n` examples in batches of `batch_size` (at least 1),
    /// drawn from `seed`.
    pub fn new(n: usize, batch_size: usize, seed: u64, epoch: u32) -> Self {
        let n = n as u64;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(u64::from(epoch));
        let keys = std::array::from_fn(|_| rng.next_u64());
        // The smallest even bit width whose power of two holds every index.
        let bits = 64 - n.saturating_sub(1).leading_zeros();
        Self { n, batch_size: batch_size.max(1), half_bits: bits.div_ceil(2), keys }
    }

    /// Number of batches.
    pub fn len(&self) -> usize {
        self.n.div_ceil(self.batch_size as u64) as usize
    }

    /// Whether the epoch has no batch (no example).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The examples of batch `b` (below [`EpochOrder::len`]), in order.
    pub fn batch(&self, b: usize) -> Vec<i64> {
        let start = b as u64 * self.batch_size as u64;
        let end = (start + self.batch_size as u64).min(self.n);
        (start..end).map(|p| self.at(p) as i64).collect()
    }

    /// The example at position `p` (below `n`) of the epoch.
    pub fn at(&self, p: u64) -> u64 {
        let mut x = p;
        loop {
            x = self.feistel(x);
            if x < self.n {
                return x;
            }
        }
    }

    /// The keyed permutation of `0..4^half_bits`.
    fn feistel(&self, x: u64) -> u64 {
        if self.half_bits == 0 {
            return x;
        }
        let mask = (1u64 << self.half_bits) - 1;
        let (mut left, mut right) = (x >> self.half_bits, x & mask);
        for key in self.keys {
            (left, right) = (right, left ^ (mix(right ^ key) & mask));
        }
        (left << self.half_bits) | right
    }
}

/// SplitMix64's finaliser: every input bit moves every output bit.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Rank `rank`'s share of a global batch in a job of `world` ranks: every `world`-th
/// example from the `rank`-th on, so the ranks of a job together take exactly the batch one
/// process would (and a short last batch leaves the higher ranks fewer, maybe none).
pub fn shard(batch: &[i64], rank: usize, world: usize) -> Vec<i64> {
    batch.iter().skip(rank).step_by(world.max(1)).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(o: &EpochOrder) -> Vec<i64> {
        (0..o.len()).flat_map(|b| o.batch(b)).collect()
    }

    #[test]
    fn the_shards_of_a_batch_are_disjoint_and_cover_it() {
        let batch: Vec<i64> = (10..17).collect();
        assert_eq!(shard(&batch, 0, 2), [10, 12, 14, 16]);
        assert_eq!(shard(&batch, 1, 2), [11, 13, 15]);
        assert_eq!(shard(&[5], 1, 2), Vec::<i64>::new());
        assert_eq!(shard(&batch, 0, 1), batch);
    }

    #[test]
    fn epoch_order_depends_only_on_seed_and_epoch() {
        let o = |seed, epoch| all(&EpochOrder::new(100, 7, seed, epoch));
        assert_eq!(o(1, 3), o(1, 3));
        assert_ne!(o(1, 3), o(1, 4));
        assert_ne!(o(1, 3), o(2, 3));
    }

    /// Every size from 0 to 600, then sizes around powers of two and four (where the
    /// network's domain changes), in several batch sizes: each example exactly once.
    #[test]
    fn every_example_appears_once_per_epoch_at_every_size() {
        let mut sizes: Vec<usize> = (0..=600).collect();
        for k in 10..=20 {
            sizes.extend([(1 << k) - 1, 1 << k, (1 << k) + 1]);
        }
        for n in sizes {
            for batch in [1, 7, 64] {
                let o = EpochOrder::new(n, batch, 5, 2);
                assert_eq!(o.len(), n.div_ceil(batch), "n {n}");
                let mut got = all(&o);
                assert!(o.batch(o.len().saturating_sub(1)).len() <= batch);
                got.sort_unstable();
                assert!(got.iter().copied().eq(0..n as i64), "n {n}, batch {batch}: not a permutation");
            }
        }
    }

    #[test]
    fn the_order_is_well_shuffled() {
        // Positions 0..n: how far each example moves, and how many stay in place.
        let n = 10_000u64;
        let o = EpochOrder::new(n as usize, 1, 42, 1);
        let fixed = (0..n).filter(|&p| o.at(p) == p).count();
        assert!(fixed < 10, "{fixed} fixed points (a random permutation has about 1)");
        let mean_shift = (0..n).map(|p| (o.at(p) as f64 - p as f64).abs()).sum::<f64>() / n as f64;
        // A uniform random permutation moves an example n/3 on average.
        assert!((mean_shift / n as f64 - 1.0 / 3.0).abs() < 0.02, "mean shift {mean_shift}");
        // Neighbours in the order are not neighbours in the data.
        let adjacent = (1..n).filter(|&p| (o.at(p) as i64 - o.at(p - 1) as i64).abs() == 1).count();
        assert!(adjacent < 10, "{adjacent} adjacent pairs");
    }
}

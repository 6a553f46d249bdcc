//! The order examples are visited in: a pure function of (seed, epoch), and each rank's
//! share of a batch.

use rand::seq::SliceRandom;
use rand::SeedableRng;

/// The batches of one epoch: a permutation of `0..n` drawn from (seed, epoch), cut into
/// `batch_size` pieces (the last may be smaller).
pub fn epoch_batches(n: usize, batch_size: usize, seed: u64, epoch: u32) -> Vec<Vec<i64>> {
    let mut order: Vec<i64> = (0..n as i64).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(u64::from(epoch));
    order.shuffle(&mut rng);
    order.chunks(batch_size).map(<[i64]>::to_vec).collect()
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
        assert_eq!(epoch_batches(100, 7, 1, 3), epoch_batches(100, 7, 1, 3));
        assert_ne!(epoch_batches(100, 7, 1, 3), epoch_batches(100, 7, 1, 4));
        assert_ne!(epoch_batches(100, 7, 1, 3), epoch_batches(100, 7, 2, 3));
    }

    #[test]
    fn every_example_appears_once_per_epoch() {
        let batches = epoch_batches(100, 7, 1, 0);
        assert_eq!(batches.len(), 15);
        let mut all: Vec<i64> = batches.concat();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }
}

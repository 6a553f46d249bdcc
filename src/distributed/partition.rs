//! How sharded state (ZeRO) is split across the ranks. Pure: it sees element counts and
//! dtypes, never tensor data.
//!
//! The trainable parameters, in the optimiser's order (by name), form buckets: consecutive
//! parameters of one dtype up to [`crate::distributed::BUCKET_BYTES`] (a larger parameter is
//! a bucket of its own). A bucket's flattened elements, padded with zeros to a multiple of
//! the world size, are split evenly: rank `r` owns elements `[r * shard, (r + 1) * shard)`.
//! So every rank owns 1/world of every bucket (balanced to one element per bucket, whatever
//! the parameters' sizes), a collective moves one bucket at a time, and each parameter lies
//! in one bucket, so a rank holds at most one contiguous piece of it. `shim/distributed.cpp`
//! moves the bytes by the same rule.

use std::ops::Range;

use tch::Kind;

/// One bucket of the partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// The parameters in it (indices into the list the partition was made from).
    pub params: Range<usize>,
    /// Their elements in all.
    pub numel: i64,
    /// Elements each rank owns (the padded count over the world).
    pub shard: i64,
}

/// One rank's piece of one parameter: elements `offset .. offset + len` of the flattened
/// parameter, at `at` in the rank's shard of its bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// The parameter (index into the list the partition was made from).
    pub param: usize,
    /// First element, in the flattened parameter.
    pub offset: i64,
    /// Elements.
    pub len: i64,
    /// The bucket.
    pub bucket: usize,
    /// Where the piece starts in the rank's shard of the bucket.
    pub at: i64,
}

/// The split of a list of parameters over `world` ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The buckets, in order.
    pub buckets: Vec<Bucket>,
    /// The ranks.
    pub world: i64,
}

impl Partition {
    /// The partition of parameters of `(elements, dtype)`, in order, over `world` ranks,
    /// with buckets of at most `cap_bytes`.
    pub fn new(params: &[(i64, Kind)], cap_bytes: i64, world: i64) -> Self {
        assert!(world >= 1, "a job has at least one rank");
        let mut buckets: Vec<Bucket> = Vec::new();
        let mut bytes = 0;
        for (i, &(numel, kind)) in params.iter().enumerate() {
            let b = numel * kind.elt_size_in_bytes() as i64;
            let fits = buckets.last().is_some_and(|last| params[last.params.start].1 == kind && bytes + b <= cap_bytes);
            if fits {
                let last = buckets.last_mut().expect("checked");
                last.params.end = i + 1;
                last.numel += numel;
                bytes += b;
            } else {
                buckets.push(Bucket { params: i..i + 1, numel, shard: 0 });
                bytes = b;
            }
        }
        for b in &mut buckets {
            b.shard = (b.numel + world - 1) / world;
        }
        Self { buckets, world }
    }

    /// The pieces rank `rank` owns, in parameter order; `sizes` are the parameters'
    /// element counts the partition was made from.
    pub fn pieces(&self, rank: i64, sizes: &[i64]) -> Vec<Piece> {
        let mut out = Vec::new();
        for (k, b) in self.buckets.iter().enumerate() {
            let (lo, hi) = (rank * b.shard, ((rank + 1) * b.shard).min(b.numel));
            let mut at = 0;
            for p in b.params.clone() {
                let (a, e) = (lo.max(at), hi.min(at + sizes[p]));
                if a < e {
                    out.push(Piece { param: p, offset: a - at, len: e - a, bucket: k, at: a - lo });
                }
                at += sizes[p];
            }
        }
        out
    }

    /// Where each bucket's parameters end (what the shim takes).
    pub fn ends(&self) -> Vec<i64> {
        self.buckets.iter().map(|b| b.params.end as i64).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element of every parameter is owned by exactly one rank, pieces sit inside
    /// their rank's shard, and shards differ by at most one element per bucket: for every
    /// world up to 5 and many lists of sizes and dtypes.
    #[test]
    fn pieces_tile_every_parameter_once() {
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for case in 0..300 {
            let count = 1 + next(12) as usize;
            let params: Vec<(i64, Kind)> = (0..count)
                .map(|_| {
                    let numel = if next(5) == 0 { 1 } else { 1 + next(3000) as i64 };
                    (numel, if next(4) == 0 { Kind::BFloat16 } else { Kind::Float })
                })
                .collect();
            let sizes: Vec<i64> = params.iter().map(|p| p.0).collect();
            let cap = [64, 4096, 1 << 20][case % 3];
            for world in 1..=5 {
                let part = Partition::new(&params, cap, world);
                let mut owned: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0u8; n as usize]).collect();
                for rank in 0..world {
                    for piece in part.pieces(rank, &sizes) {
                        let b = &part.buckets[piece.bucket];
                        assert!(b.params.contains(&piece.param));
                        assert!(piece.at >= 0 && piece.at + piece.len <= b.shard, "{piece:?} outside its shard");
                        for e in piece.offset..piece.offset + piece.len {
                            owned[piece.param][e as usize] += 1;
                        }
                    }
                }
                assert!(owned.iter().flatten().all(|&c| c == 1), "case {case}, world {world}: {params:?}");
                for b in &part.buckets {
                    assert!(b.shard * world >= b.numel && (b.shard - 1) * world < b.numel);
                    let kinds: Vec<Kind> = b.params.clone().map(|p| params[p].1).collect();
                    assert!(kinds.windows(2).all(|w| w[0] == w[1]), "one dtype a bucket");
                }
                assert_eq!(part.ends().last().copied(), Some(count as i64));
            }
        }
    }

    #[test]
    fn a_parameter_larger_than_the_cap_is_a_bucket_of_its_own() {
        let part = Partition::new(&[(10, Kind::Float), (1000, Kind::Float), (10, Kind::Float)], 400, 2);
        assert_eq!(part.buckets.iter().map(|b| b.params.clone()).collect::<Vec<_>>(), [0..1, 1..2, 2..3]);
        assert_eq!(part.buckets[1].shard, 500);
    }
}

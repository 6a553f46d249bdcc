//! Estimating how well a plane will code, without coding it: order-0 entropy of the plane
//! or of its differences, on sampled blocks, with one Huffman code for the plane or one per
//! block; and the filter that choice picks ([`choose_filter`]).

use crate::layout::Codec;

/// Planes whose order-0 entropy (of the plane or of its differences, whichever is lower) is
/// at least this many bits per byte are stored raw without trying zstd: at most ~1.2% could be
/// saved, which does not pay for the time to code and decode them.
pub(super) const RAW_ENTROPY_BITS: f64 = 7.9;

/// Blocks of a plane sampled for the entropy estimate: 16 blocks of 4 KiB spread over it.
const ESTIMATE_BLOCKS: usize = 16;

/// Bytes per sampled block; also the block size of the per-block estimate.
const ESTIMATE_BLOCK: usize = 4 << 10;

/// Estimated cost of a Huffman table in a zstd block, in bits (a table for a few dozen
/// symbols takes 20 to 40 bytes).
const TABLE_BITS: f64 = 256.0;

/// The filter chosen for a plane, and whether its statistics vary along it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Filter {
    pub(super) codec: Codec,
    /// Per-block codes are estimated to beat one code for the whole plane: worth trying the
    /// literal coders with small blocks.
    pub(super) varies: bool,
    /// Estimated bits per byte after the filter.
    pub(super) bits: f64,
}

/// Picks the filter before zstd (none, differences along the elements, differences along
/// the rows) whose output has the lowest estimated entropy; `None` when even that is so high
/// that the plane is best stored raw.
pub(super) fn choose_filter(plane: &[u8], row: usize) -> Option<Filter> {
    let mut candidates = vec![Codec::Zstd, Codec::DeltaZstd];
    if row > 1 && row < plane.len() {
        candidates.push(Codec::RowDeltaZstd);
    }
    let mut best: Option<(Filter, f64)> = None;
    for codec in candidates {
        let (one_code, per_block) = estimate_bits(plane, codec.lag(row));
        let bits = one_code.min(per_block);
        if best.map_or(true, |(_, b)| bits < b) {
            let varies = per_block < one_code;
            best = Some((Filter { codec, varies, bits }, bits));
        }
    }
    best.filter(|&(_, bits)| bits < RAW_ENTROPY_BITS).map(|(filter, _)| filter)
}

/// Estimated bits per byte of coding `plane`'s differences at distance `lag` (0: the plane
/// itself) with Huffman codes, on up to `ESTIMATE_BLOCKS` blocks spread over the plane: with
/// one code for all blocks, and with one code per block (plus the cost of its table), as the
/// literal coders with large and small blocks would do.
pub(super) fn estimate_bits(plane: &[u8], lag: usize) -> (f64, f64) {
    let mut diff = [0u8; ESTIMATE_BLOCK];
    if plane.len() <= ESTIMATE_BLOCK {
        // One block (a small plane): one histogram, and the per-block code is the one code
        // plus its table. The same figures as below, at a fraction of the fixed cost, which
        // is what counts on the many small planes of a large model's biases and norms.
        let n = plane.len().max(1);
        let bytes = if lag == 0 { plane } else { differences(plane, 0..plane.len(), lag, &mut diff) };
        let mut hist = [0u32; 256];
        for &b in bytes {
            hist[b as usize] += 1;
        }
        let bits = block_bits(&hist, bytes.len());
        return (bits / n as f64, (bits + TABLE_BITS) / n as f64);
    }
    let mut all = [0u32; 256];
    let mut per_block_bits = 0.0;
    let mut n = 0;
    for range in sampled_blocks(plane.len()) {
        let len = range.len();
        let bytes = if lag == 0 { &plane[range] } else { differences(plane, range, lag, &mut diff) };
        let hist = histogram(bytes);
        per_block_bits += block_bits(&hist, len) + TABLE_BITS;
        for (a, h) in all.iter_mut().zip(hist) {
            *a += h;
        }
        n += len;
    }
    let one_code_bits = entropy(&all, n) * n as f64;
    (one_code_bits / n as f64, per_block_bits / n as f64)
}

/// The blocks of a plane of `len` bytes that [`estimate_bits`] samples: up to
/// `ESTIMATE_BLOCKS` of `ESTIMATE_BLOCK` bytes (the last one shorter when the plane ends
/// there), evenly spaced from its start; the whole plane when it is one block.
fn sampled_blocks(len: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let blocks = len.div_ceil(ESTIMATE_BLOCK);
    let step = blocks.div_ceil(ESTIMATE_BLOCKS).max(1);
    (0..blocks).step_by(step).map(move |block| block * ESTIMATE_BLOCK..len.min((block + 1) * ESTIMATE_BLOCK))
}

/// The differences at distance `lag` of `plane[range]` (`p[i] - p[i-lag]`, wrapping; `p[i]`
/// for `i < lag`), in `out`. In two straight loops over slices, which the compiler vectorises.
///
/// Any `lag`, including one past the range's end (a row longer than a sampled block: the
/// whole range is then copied) or past the plane's.
fn differences<'o>(plane: &[u8], range: std::ops::Range<usize>, lag: usize, out: &'o mut [u8]) -> &'o [u8] {
    let out = &mut out[..range.len()];
    // Positions below `lag` have nothing before them: the range's first `first` bytes, all of
    // them when the range ends at or before `lag`.
    let first = lag.saturating_sub(range.start).min(range.len());
    let split = range.start + first;
    out[..first].copy_from_slice(&plane[range.start..split]);
    if split == range.end {
        return out;
    }
    // Here `split >= lag`: either the range starts at or after `lag` (`first` is 0), or
    // `split` is `lag` itself.
    let now = &plane[split..range.end];
    let before = &plane[split - lag..range.end - lag];
    for ((d, &b), &a) in out[first..].iter_mut().zip(now).zip(before) {
        *d = b.wrapping_sub(a);
    }
    out
}

/// Byte counts of `bytes`. Four tables, merged at the end: a plane of few distinct values
/// (exponents) would otherwise increment the same counter back to back, and each increment
/// waits for the one before it to reach memory (four times slower, measured).
fn histogram(bytes: &[u8]) -> [u32; 256] {
    let mut tables = [[0u32; 256]; 4];
    let mut quads = bytes.chunks_exact(4);
    for q in &mut quads {
        tables[0][q[0] as usize] += 1;
        tables[1][q[1] as usize] += 1;
        tables[2][q[2] as usize] += 1;
        tables[3][q[3] as usize] += 1;
    }
    for &b in quads.remainder() {
        tables[0][b as usize] += 1;
    }
    let mut hist = tables[0];
    for t in &tables[1..] {
        for (h, c) in hist.iter_mut().zip(t) {
            *h += c;
        }
    }
    hist
}

/// Bits of an ideal order-0 code for a block of `n <= ESTIMATE_BLOCK` bytes with histogram
/// `hist`: n·log2(n) − Σ c·log2(c), from a table, since this runs for every sampled block.
fn block_bits(hist: &[u32; 256], n: usize) -> f64 {
    static TABLE: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        (0..=ESTIMATE_BLOCK).map(|c| if c == 0 { 0.0 } else { c as f64 * (c as f64).log2() }).collect()
    });
    t[n] - hist.iter().map(|&c| t[c as usize]).sum::<f64>()
}

fn entropy(hist: &[u32; 256], n: usize) -> f64 {
    let n = n as f64;
    hist.iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random bytes: differences of noise are noise, so a wrong distance shows.
    fn noise(len: usize) -> Vec<u8> {
        let mut x = 3u64;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect()
    }

    /// The differences at distance `lag` of `p[range]` by their definition, one position at a
    /// time: slow, but with nothing in common with [`differences`] to share its mistakes.
    fn naive_differences(p: &[u8], range: std::ops::Range<usize>, lag: usize) -> Vec<u8> {
        range.map(|i| if i < lag { p[i] } else { p[i].wrapping_sub(p[i - lag]) }).collect()
    }

    /// The same in slices (fast enough to run for every row length): the positions before
    /// `lag` copied, those from it on less the byte `lag` before. Itself checked against
    /// [`naive_differences`] in the test below.
    fn reference_differences(p: &[u8], range: std::ops::Range<usize>, lag: usize, out: &mut Vec<u8>) {
        let cut = lag.clamp(range.start, range.end);
        out.clear();
        out.extend_from_slice(&p[range.start..cut]);
        // Empty when the range ends before `lag`; otherwise `cut >= lag`.
        let before = &p[cut.saturating_sub(lag)..];
        out.extend(p[cut..range.end].iter().zip(before).map(|(&b, &a)| b.wrapping_sub(a)));
    }

    /// Bytes of one plane of a 1 MiB chunk (the writer's default) of 4-byte elements.
    const F32_CHUNK_PLANE: usize = 1 << 18;

    /// The longest row in a plane for which row differences are a candidate at 1 MiB chunks: a
    /// row must be shorter than its plane, and planes hold whole rows, so it is at most half the
    /// largest plane (a chunk of bytes: `Bool`, `U8`, `I8` or a small tensor's bytes).
    const LONGEST_ROW: usize = 1 << 19;

    /// Issue #21: a sampled block wholly inside the first row (rows of more than
    /// `ESTIMATE_BLOCK` bytes) made `differences` subtract past zero, and the writer panic on
    /// any tensor whose last dimension was 4097 to 131072.
    #[test]
    fn a_row_longer_than_a_sampled_block_does_not_underflow() {
        let plane = noise(20_000);
        for row in [4097, 5000, 9999] {
            let (one_code, per_block) = estimate_bits(&plane[..2 * row], row);
            assert!(one_code > 7.0 && per_block > 7.0, "{row}: {one_code} {per_block}");
            assert_eq!(choose_filter(&plane[..2 * row], row), None, "noise is stored raw");
        }
        let mut out = [0u8; ESTIMATE_BLOCK];
        assert_eq!(differences(&plane, 0..4096, 5000, &mut out), &plane[..4096]);
        assert_eq!(differences(&plane[..10], 0..10, 10, &mut out), &plane[..10]);
        assert_eq!(differences(&[], 0..0, 1, &mut out), &[] as &[u8]);
    }

    /// Every row length for which row differences are a candidate at the default chunk size,
    /// on a plane of two rows (the shortest for which they are: its sampled blocks lie before,
    /// across and after the first row's end) and, for rows of up to half of it, on a float32
    /// chunk's plane of whole rows: every sampled block's differences are the reference's, and
    /// for rows of up to 2^17 bytes (those of every dtype but the byte-wide and 16-bit ones)
    /// the estimate itself runs, without panicking. The estimate depends on the row only
    /// through `differences` on `sampled_blocks`, which the check covers for every row. One
    /// plane, reused buffers; the rows are shared out over the cores.
    #[test]
    fn row_differences_match_the_reference_for_every_row_length() {
        let plane = noise(2 * LONGEST_ROW);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::thread::scope(|scope| {
            for t in 0..threads {
                let plane = &plane;
                scope.spawn(move || {
                    let (mut out, mut want) = ([0u8; ESTIMATE_BLOCK], Vec::new());
                    for row in (1 + t..=LONGEST_ROW).step_by(threads) {
                        let chunk = F32_CHUNK_PLANE / row * row;
                        for len in std::iter::once(2 * row).chain(Some(chunk).filter(|&c| c > 2 * row)) {
                            let p = &plane[..len];
                            if row <= 1 << 17 && len == 2 * row {
                                estimate_bits(p, row);
                            }
                            for range in sampled_blocks(len) {
                                reference_differences(p, range.clone(), row, &mut want);
                                let got = differences(p, range.clone(), row, &mut out);
                                assert!(got == want, "row {row}, plane {len}, block {range:?}");
                            }
                        }
                    }
                });
            }
        });
    }

    /// The fast reference above is the definition, on every block relation that matters: rows
    /// up to two blocks long, and around each multiple of a block up to the longest row.
    #[test]
    fn the_reference_differences_are_the_definition() {
        let plane = noise(2 * LONGEST_ROW);
        let mut want = Vec::new();
        let rows = (1..=2 * ESTIMATE_BLOCK)
            .chain((ESTIMATE_BLOCK..=LONGEST_ROW).step_by(ESTIMATE_BLOCK).flat_map(|r| [r - 1, r, r + 1]));
        for row in rows.filter(|&r| r <= LONGEST_ROW) {
            let len = 2 * row;
            for range in sampled_blocks(len) {
                reference_differences(&plane, range.clone(), row, &mut want);
                assert_eq!(want, naive_differences(&plane, range.clone(), row), "row {row}, block {range:?}");
            }
        }
    }
}

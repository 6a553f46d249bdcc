//! Chunk encoding: splitting elements into byte planes, choosing how each plane is stored, and
//! the inverse. The choice of codec is the writer's policy; a reader only follows the index.
//!
//! Why planes: in a float the sign and exponent bits take few values (trained weights use a
//! handful of exponents), while the low mantissa bits are close to uniform noise. Coding the
//! whole buffer mixes the two and zstd gains little; coding byte `k` of every element as its
//! own stream lets the exponent plane shrink three- or fourfold and the noise planes be stored
//! as they are, which is also what makes the codec faster than zstd on the whole buffer
//! (ZipNN, Blosc's shuffle filter).

use std::io;
use std::ptr::NonNull;

use zstd::zstd_safe::zstd_sys;
use zstd::zstd_safe::CParameter;

use crate::layout::{Codec, Encoding, PlaneEntry};
use crate::Dtype;

/// Planes whose order-0 entropy (of the plane or of its differences, whichever is lower) is
/// at least this many bits per byte are stored raw without trying zstd: at most ~1.2% could be
/// saved, which does not pay for the time to code and decode them.
const RAW_ENTROPY_BITS: f64 = 7.9;

/// zstd level for both coders. Level 1 codes as well as 3 on planes (the work is in the
/// entropy coder, which the level barely changes) and is faster.
const ZSTD_LEVEL: i32 = 1;

/// Shortest match the LZ coder looks for. At zstd's default (4 or 5) on low-entropy planes it
/// finds short chance repetitions that cost more as matches than as Huffman-coded literals.
const LZ_MIN_MATCH: i32 = 7;

/// Bytes of a plane on which the coders are tried; the winner codes the whole plane. A quarter
/// of a float32 plane at 1 MiB chunks; 32 KiB picked worse coders for bf16 Adam moments.
const TRIAL_BYTES: usize = 64 << 10;

/// How much smaller (as a fraction) a coder must be on the trial to be preferred to one tried
/// before it: those decode faster, and a sample is only a sample.
const CODER_MARGIN: f64 = 0.02;

/// Planes shorter than this are coded by the first of `CODERS` without trying the others,
/// unless their estimate is below `HUFFMAN_FLOOR_BITS`.
const SMALL_PLANE: usize = 8 << 10;

/// Estimated bits per byte below which LZ may beat Huffman literals (which cost at least one
/// bit a byte unless the whole block is one byte repeated).
const HUFFMAN_FLOOR_BITS: f64 = 0.8;

/// Blocks of a plane sampled for the entropy estimate: 16 blocks of 4 KiB spread over it.
const ESTIMATE_BLOCKS: usize = 16;

/// Bytes per sampled block; also the block size of the per-block estimate.
const ESTIMATE_BLOCK: usize = 4 << 10;

/// Estimated cost of a Huffman table in a zstd block, in bits (a table for a few dozen
/// symbols takes 20 to 40 bytes).
const TABLE_BITS: f64 = 256.0;

/// Per-thread state for encoding chunks: two zstd contexts and scratch planes.
pub(crate) struct ChunkEncoder {
    lz: zstd::bulk::Compressor<'static>,
    literals: LiteralCompressor,
    planes: Vec<Vec<u8>>,
    delta: Vec<u8>,
    trial: Vec<u8>,
    best: Vec<u8>,
}

impl ChunkEncoder {
    pub(crate) fn new() -> io::Result<Self> {
        let mut lz = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
        lz.set_parameter(CParameter::MinMatch(LZ_MIN_MATCH as u32))?;
        // Planes are at most MAX_CHUNK_BYTES; a 1 KiB hash table keeps the context small and
        // the match search cheap, and planes repeat at short distances if at all.
        lz.set_parameter(CParameter::HashLog(10))?;
        Ok(ChunkEncoder {
            lz,
            literals: LiteralCompressor::new(ZSTD_LEVEL)?,
            planes: Vec::new(),
            delta: Vec::new(),
            trial: Vec::new(),
            best: Vec::new(),
        })
    }

    /// Encodes one chunk (`data` holds whole elements), appending its stored planes to `out`;
    /// returns each plane's entry.
    pub(crate) fn encode(
        &mut self,
        encoding: Encoding,
        dtype: Dtype,
        row: usize,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> io::Result<Vec<PlaneEntry>> {
        if encoding == Encoding::Bytes {
            return Ok(vec![self.encode_plane(data, row, false, out)?]);
        }
        let mut planes = std::mem::take(&mut self.planes);
        split(encoding, dtype, data, &mut planes);
        // Only a float's top plane (its exponent bits) is tried with a rank-one prediction:
        // mantissa planes are close to noise, and integers have no such structure to find.
        let top = planes.len() - 1;
        let entries = planes
            .iter()
            .enumerate()
            .map(|(k, plane)| self.encode_plane(plane, row, encoding == Encoding::FloatPlanes && k == top, out))
            .collect();
        self.planes = planes;
        entries
    }

    /// Stores one plane the cheapest way found: raw, or zstd of the plane, of its
    /// differences along the element or row, or (when `rank_one`) of what is left after a
    /// prediction per row and per column. `row` is the tensor's row length in this plane.
    fn encode_plane(&mut self, plane: &[u8], row: usize, rank_one: bool, out: &mut Vec<u8>) -> io::Result<PlaneEntry> {
        let raw = |out: &mut Vec<u8>| -> io::Result<PlaneEntry> {
            out.extend_from_slice(plane);
            Ok(PlaneEntry(Codec::Raw, plane.len() as u64))
        };
        let mut scratch = std::mem::take(&mut self.delta);
        let mut filter = choose_filter(plane, row);
        let mut predicted = false;
        if rank_one && row >= 2 && row.checked_mul(RANK_ONE_MIN_ROWS).is_some_and(|min| plane.len() >= min) {
            rank_one_encode(plane, row, &mut scratch);
            let residual = &scratch[row + plane.len().div_ceil(row)..];
            let (one_code, per_block) = estimate_bits(residual, 0);
            // The predictions cost about as much as their own length at 4 bits a byte.
            let overhead = 4.0 * (row + plane.len().div_ceil(row)) as f64 / plane.len() as f64;
            let bits = one_code.min(per_block) + overhead;
            let best = filter.map_or(RAW_ENTROPY_BITS, |f| f.bits);
            if bits < best * (1.0 - RANK_ONE_MARGIN) {
                predicted = true;
                filter = Some(Filter { codec: Codec::RankOneZstd, varies: per_block < one_code, bits });
            }
        }
        let Some(Filter { codec, varies, bits }) = filter else {
            self.delta = scratch;
            return raw(out);
        };
        let src = match (predicted, codec.lag(row)) {
            (true, _) => scratch.as_slice(),
            (false, 0) => plane,
            (false, lag) => {
                delta_encode(plane, lag, &mut scratch);
                scratch.as_slice()
            }
        };
        let entry = match self.compress(src, varies, bits)? {
            best if best.len() < plane.len() => {
                out.extend_from_slice(best);
                PlaneEntry(codec, best.len() as u64)
            }
            _ => raw(out)?,
        };
        self.delta = scratch;
        Ok(entry)
    }

    /// Codes `src` as one zstd frame with the coder that does best on a sample of it; the
    /// literal coders with small blocks are tried only if its statistics `vary` along it.
    fn compress(&mut self, src: &[u8], varies: bool, bits: f64) -> io::Result<&[u8]> {
        let start = src.len().saturating_sub(TRIAL_BYTES) / 2;
        let sample = &src[start..src.len().min(start + TRIAL_BYTES)];
        let mut best: Option<(Coder, usize)> = None;
        // A small plane (a bias, a norm's weight) is coded by the first coder only: trying the
        // others costs more than the few bytes they could save, and a checkpoint of a large
        // model has tens of thousands of such planes. Unless it is nearly constant: Huffman
        // codes take at least a bit a byte, and LZ's matches go far below.
        let coders = if src.len() < SMALL_PLANE && bits >= HUFFMAN_FLOOR_BITS { &CODERS[..1] } else { &CODERS[..] };
        for &coder in coders {
            if matches!(coder, Coder::Literals { block } if block < MAX_BLOCK) && !varies {
                continue;
            }
            self.code(coder, sample, Slot::Trial)?;
            let len = self.trial.len();
            if best.map_or(true, |(_, b)| (len as f64) < b as f64 * (1.0 - CODER_MARGIN)) {
                best = Some((coder, len));
                std::mem::swap(&mut self.trial, &mut self.best);
            }
        }
        let (coder, _) = best.expect("at least one coder");
        if sample.len() < src.len() {
            self.code(coder, src, Slot::Best)?;
        }
        Ok(&self.best)
    }

    /// Replaces the slot's bytes with one zstd frame of `src`.
    fn code(&mut self, coder: Coder, src: &[u8], slot: Slot) -> io::Result<()> {
        let out = match slot {
            Slot::Trial => &mut self.trial,
            Slot::Best => &mut self.best,
        };
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(src.len()));
        match coder {
            Coder::Literals { block } => self.literals.compress(src, block, out),
            Coder::Lz => self.lz.compress_to_buffer(src, out).map(drop),
        }
    }
}

/// Which of the encoder's output buffers to fill.
#[derive(Clone, Copy)]
enum Slot {
    Trial,
    Best,
}

/// zstd's largest block, 128 KiB.
const MAX_BLOCK: u32 = 128 << 10;

/// A way to code a plane as a zstd frame.
#[derive(Debug, Clone, Copy)]
enum Coder {
    /// Literals only (Huffman), in blocks of at most this many bytes: each block has its own
    /// code table (or reuses the previous one when that is cheaper), so small blocks follow
    /// statistics that change along the plane, such as the scale of each row of a weight
    /// matrix's optimizer state, at the price of a table per block.
    Literals { block: u32 },
    /// zstd's LZ match finder and entropy coders: for planes with repeated runs.
    Lz,
}

/// The coders tried on each plane's sample, fastest first; a later one must beat the best so
/// far by `CODER_MARGIN`. Measured on a trained MLP's weights and Adam moments: weights'
/// exponents want 128 KiB literal blocks (2.40 bits each; 2.50 in 2 KiB blocks), the moments'
/// exponents 2 KiB blocks (4.15-4.74 bits; 4.46-5.29 in 128 KiB blocks), and delta-coded
/// exponents of the first layer's moments LZ (2.28 bits; 2.54 as literals).
const CODERS: [Coder; 5] = [
    Coder::Literals { block: MAX_BLOCK },
    Coder::Lz,
    Coder::Literals { block: 16 << 10 },
    Coder::Literals { block: 4 << 10 },
    Coder::Literals { block: 2 << 10 },
];

/// Per-thread state for decoding chunks.
pub(crate) struct ChunkDecoder {
    zstd: zstd::bulk::Decompressor<'static>,
    planes: Vec<Vec<u8>>,
    /// A rank-one frame's decoded bytes (predictions and residuals).
    frame: Vec<u8>,
}

/// Why a plane did not decode: its position in the chunk, its offset in the chunk's stored
/// bytes, and the decoder's words.
#[derive(Debug)]
pub(crate) struct PlaneError {
    pub plane: usize,
    pub offset: u64,
    pub reason: String,
}

impl ChunkDecoder {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(ChunkDecoder { zstd: zstd::bulk::Decompressor::new()?, planes: Vec::new(), frame: Vec::new() })
    }

    /// Decodes one chunk's stored bytes into `out`. The caller has validated the entries
    /// against the encoding and `out.len()`, and `stored` is exactly the planes' bytes.
    pub(crate) fn decode(
        &mut self,
        encoding: Encoding,
        dtype: Dtype,
        row: usize,
        entries: &[PlaneEntry],
        stored: &[u8],
        out: &mut [u8],
    ) -> Result<(), PlaneError> {
        if encoding == Encoding::Bytes {
            return decode_plane(&mut self.zstd, &mut self.frame, entries[0], row, stored, out)
                .map_err(|reason| PlaneError { plane: 0, offset: 0, reason });
        }
        let elems = out.len() / dtype.size();
        self.planes.resize_with(entries.len(), Vec::new);
        let mut sources: Vec<&[u8]> = Vec::with_capacity(entries.len());
        let mut at = 0usize;
        for (p, (&entry, scratch)) in entries.iter().zip(self.planes.iter_mut()).enumerate() {
            let len = entry.1 as usize;
            let bytes = &stored[at..at + len];
            if entry.0 == Codec::Raw {
                sources.push(bytes);
            } else {
                scratch.resize(elems, 0);
                decode_plane(&mut self.zstd, &mut self.frame, entry, row, bytes, scratch)
                    .map_err(|reason| PlaneError { plane: p, offset: at as u64, reason })?;
                sources.push(scratch);
            }
            at += len;
        }
        merge(encoding, dtype, &sources, out);
        Ok(())
    }
}

/// Decodes one plane into `out`, which has the plane's raw length; `frame` is scratch for
/// rank-one frames.
fn decode_plane(
    zstd: &mut zstd::bulk::Decompressor<'static>,
    frame: &mut Vec<u8>,
    PlaneEntry(codec, _): PlaneEntry,
    row: usize,
    stored: &[u8],
    out: &mut [u8],
) -> Result<(), String> {
    match codec {
        Codec::Raw => out.copy_from_slice(stored),
        Codec::Zstd | Codec::DeltaZstd | Codec::RowDeltaZstd => {
            let n = zstd.decompress_to_buffer(stored, out).map_err(|e| e.to_string())?;
            if n != out.len() {
                return Err(format!("{n} bytes decoded, {} expected", out.len()));
            }
            delta_decode(out, codec.lag(row));
        }
        Codec::RankOneZstd => {
            // Validation checked that the codec applies to this plane and row.
            let len = crate::layout::rank_one_len(out.len() as u64, row as u64)
                .ok_or_else(|| format!("rank-one plane of {} bytes with rows of {row}", out.len()))?
                as usize;
            frame.resize(len, 0);
            let n = zstd.decompress_to_buffer(stored, &mut frame[..]).map_err(|e| e.to_string())?;
            if n != len {
                return Err(format!("{n} bytes decoded, {len} expected"));
            }
            rank_one_decode(frame, row, out);
        }
    }
    Ok(())
}

/// The filter chosen for a plane, and whether its statistics vary along it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Filter {
    codec: Codec,
    /// Per-block codes are estimated to beat one code for the whole plane: worth trying the
    /// literal coders with small blocks.
    varies: bool,
    /// Estimated bits per byte after the filter.
    bits: f64,
}

/// Fewest rows in a chunk's plane for a rank-one prediction to be tried: its predictions
/// cost a byte per column and per row, and a median of a few rows predicts little.
const RANK_ONE_MIN_ROWS: usize = 16;

/// How much lower (as a fraction) the estimate after a rank-one prediction must be than the
/// best other filter's: it costs one more pass over the plane to decode.
const RANK_ONE_MARGIN: f64 = 0.02;

/// Rows sampled per column for its prediction (a median): enough to find a column's level,
/// few enough to cost little beside coding the plane.
const RANK_ONE_SAMPLE_ROWS: usize = 31;

/// Replaces `out` with `c | w | d` for `plane` with rows of `row` bytes (the last row may be
/// short): `c[j]` the median of a sample of column `j`, `w[r]` the median of row `r` less the
/// column predictions (differences taken as signed bytes), and
/// `d[i] = p[i] - c[i mod row] - w[i div row]` (wrapping). The predictions are the writer's
/// choice; any `c` and `w` decode.
fn rank_one_encode(plane: &[u8], row: usize, out: &mut Vec<u8>) {
    let rows = plane.len().div_ceil(row);
    let full = plane.len() / row;
    out.clear();
    out.resize(row + rows + plane.len(), 0);
    let (c, rest) = out.split_at_mut(row);
    let (w, d) = rest.split_at_mut(rows);
    // Column predictions from evenly spaced full rows.
    let sample = full.min(RANK_ONE_SAMPLE_ROWS);
    let picked: Vec<usize> = (0..sample).map(|k| k * full / sample).collect();
    let mut column = Vec::with_capacity(sample);
    for (j, cj) in c.iter_mut().enumerate() {
        column.clear();
        column.extend(picked.iter().map(|&r| plane[r * row + j]));
        let mid = column.len() / 2;
        *cj = *column.select_nth_unstable(mid).1;
    }
    // Row predictions: the median of each row's differences from its columns', as signed
    // bytes, from a histogram.
    for (r, (wr, line)) in w.iter_mut().zip(plane.chunks(row)).enumerate() {
        let out_line = &mut d[r * row..r * row + line.len()];
        let mut hist = [0u32; 256];
        for ((o, &p), &cj) in out_line.iter_mut().zip(line).zip(c.iter()) {
            *o = p.wrapping_sub(cj);
            hist[*o as usize] += 1;
        }
        // Signed order: -128..=127 is bytes 128..=255 then 0..=127.
        let half = (line.len() as u32).div_ceil(2);
        let mut seen = 0;
        *wr = (128..256)
            .chain(0..128)
            .find(|&b| {
                seen += hist[b];
                seen >= half
            })
            .unwrap_or(0) as u8;
        let wr = *wr;
        for o in out_line.iter_mut() {
            *o = o.wrapping_sub(wr);
        }
    }
}

/// Inverse of [`rank_one_encode`]: `frame` holds `c | w | d`; writes the plane to `out`.
fn rank_one_decode(frame: &[u8], row: usize, out: &mut [u8]) {
    let rows = out.len().div_ceil(row);
    let (c, rest) = frame.split_at(row);
    let (w, d) = rest.split_at(rows);
    for ((line, residual), &wr) in out.chunks_mut(row).zip(d.chunks(row)).zip(w) {
        // In slices the compiler vectorises.
        for ((o, &x), &cj) in line.iter_mut().zip(residual).zip(c) {
            *o = x.wrapping_add(cj).wrapping_add(wr);
        }
    }
}

/// Picks the filter before zstd (none, differences along the elements, differences along
/// the rows) whose output has the lowest estimated entropy; `None` when even that is so high
/// that the plane is best stored raw.
fn choose_filter(plane: &[u8], row: usize) -> Option<Filter> {
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
fn estimate_bits(plane: &[u8], lag: usize) -> (f64, f64) {
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

/// Replaces `out` with the differences of `plane` at distance `lag`: `d[i] = p[i] - p[i-lag]`
/// (wrapping), `d[i] = p[i]` for `i < lag`.
fn delta_encode(plane: &[u8], lag: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&plane[..lag.min(plane.len())]);
    out.extend(plane.iter().skip(lag).zip(plane).map(|(&b, &before)| b.wrapping_sub(before)));
}

/// Inverse of [`delta_encode`], in place; `lag` 0 leaves the plane as it is.
fn delta_decode(plane: &mut [u8], lag: usize) {
    match lag {
        0 => {}
        1 => {
            let mut acc = 0u8;
            for b in plane {
                acc = acc.wrapping_add(*b);
                *b = acc;
            }
        }
        _ => {
            // Row by row, each row added to the one before it: slices the compiler vectorises.
            let mut start = lag;
            while start < plane.len() {
                let end = plane.len().min(start + lag);
                let (before, rest) = plane.split_at_mut(start);
                let above = &before[start - lag..end - lag];
                for (b, &a) in rest[..end - start].iter_mut().zip(above) {
                    *b = b.wrapping_add(a);
                }
                start = end;
            }
        }
    }
}

/// Splits whole elements into planes: plane k gets byte k (little-endian) of each element,
/// after a one-bit left rotation for `FloatPlanes`.
pub(crate) fn split(encoding: Encoding, dtype: Dtype, data: &[u8], planes: &mut Vec<Vec<u8>>) {
    let n = data.len() / dtype.size();
    planes.resize_with(dtype.size(), Vec::new);
    for p in planes.iter_mut() {
        p.clear();
        p.resize(n, 0);
    }
    let mut outs: Vec<&mut [u8]> = planes.iter_mut().map(Vec::as_mut_slice).collect();
    crate::shuffle::split(data, encoding == Encoding::FloatPlanes, &mut outs);
}

/// Inverse of [`split`]: writes whole elements to `out` from the planes.
pub(crate) fn merge(encoding: Encoding, dtype: Dtype, planes: &[&[u8]], out: &mut [u8]) {
    debug_assert_eq!(planes.len(), dtype.size());
    crate::shuffle::merge(planes, encoding == Encoding::FloatPlanes, out);
}

/// A zstd context that codes its input as literals only (Huffman, no LZ matches), through
/// `ZSTD_compressSequences` with no sequences. The output is an ordinary zstd frame. zstd's
/// public levels always search for matches, and on planes of independent values such as
/// exponents those matches cost more than they save (measured: 2.4 bits per exponent of
/// trained weights as literals, 2.9 at level 1).
struct LiteralCompressor(NonNull<zstd_sys::ZSTD_CCtx>);

// SAFETY: a ZSTD_CCtx has no thread affinity; it may be used from any one thread at a time,
// which `&mut self` on every use guarantees.
unsafe impl Send for LiteralCompressor {}

impl LiteralCompressor {
    fn new(level: i32) -> io::Result<Self> {
        // SAFETY: plain constructor; a null return means out of memory.
        let ctx = NonNull::new(unsafe { zstd_sys::ZSTD_createCCtx() })
            .ok_or_else(|| io::Error::other("zstd could not allocate a context"))?;
        let this = LiteralCompressor(ctx);
        // SAFETY: ctx is a live context owned by `this`.
        let code = unsafe {
            zstd_sys::ZSTD_CCtx_setParameter(this.0.as_ptr(), zstd_sys::ZSTD_cParameter::ZSTD_c_compressionLevel, level)
        };
        check(code)?;
        Ok(this)
    }

    /// Replaces `out` with one zstd frame holding `src`, in blocks of at most `block` bytes
    /// (1 KiB to 128 KiB).
    fn compress(&mut self, src: &[u8], block: u32, out: &mut Vec<u8>) -> io::Result<()> {
        // SAFETY: ctx is a live context owned by `self`. A finished frame leaves the context
        // in a stage where parameters are locked until the session is reset.
        // ZSTD_c_maxBlockSize is experimental param 18 in zstd 1.5.6 and later (zstd.h names
        // it only as a macro).
        let code = unsafe {
            check(zstd_sys::ZSTD_CCtx_reset(self.0.as_ptr(), zstd_sys::ZSTD_ResetDirective::ZSTD_reset_session_only))?;
            zstd_sys::ZSTD_CCtx_setParameter(
                self.0.as_ptr(),
                zstd_sys::ZSTD_cParameter::ZSTD_c_experimentalParam18,
                block as i32,
            )
        };
        check(code)?;
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(src.len()));
        // SAFETY: the context is live and exclusively ours; `out` has `capacity()` writable
        // bytes; zero sequences with a null pointer is the documented "all literals" case; the
        // return value is checked before it is used as a length, and is at most the capacity.
        let n = unsafe {
            zstd_sys::ZSTD_compressSequences(
                self.0.as_ptr(),
                out.as_mut_ptr().cast(),
                out.capacity(),
                std::ptr::null(),
                0,
                src.as_ptr().cast(),
                src.len(),
            )
        };
        let n = check(n)?;
        // SAFETY: zstd wrote n <= capacity initialised bytes.
        unsafe { out.set_len(n) };
        Ok(())
    }
}

impl Drop for LiteralCompressor {
    fn drop(&mut self) {
        // SAFETY: the context is live and dropped once.
        unsafe { zstd_sys::ZSTD_freeCCtx(self.0.as_ptr()) };
    }
}

/// Turns a zstd return code into a length or an error.
fn check(code: usize) -> io::Result<usize> {
    // SAFETY: these functions only read the integer and return a static string.
    unsafe {
        if zstd_sys::ZSTD_isError(code) != 0 {
            let msg = std::ffi::CStr::from_ptr(zstd_sys::ZSTD_getErrorName(code));
            return Err(io::Error::other(msg.to_string_lossy().into_owned()));
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_planes_put_the_exponent_on_top() {
        // 1.0f32 = 0x3F80_0000: exponent 127, rotated left: 0x7F00_0000.
        let mut planes = Vec::new();
        split(Encoding::FloatPlanes, Dtype::F32, &1.0f32.to_le_bytes(), &mut planes);
        assert_eq!(planes, [[0x00], [0x00], [0x00], [0x7F]]);
        // -2.0 = 0xC000_0000: exponent 128, sign to the bottom bit.
        split(Encoding::FloatPlanes, Dtype::F32, &(-2.0f32).to_le_bytes(), &mut planes);
        assert_eq!(planes, [[0x01], [0x00], [0x00], [0x80]]);
    }

    #[test]
    fn split_then_merge_is_identity_for_every_width() {
        let data: Vec<u8> = (0..64u32).map(|i| (i * 37 + 11) as u8).collect();
        for dtype in [Dtype::I16, Dtype::BF16, Dtype::F32, Dtype::I64, Dtype::F64] {
            for encoding in [Encoding::Planes, Encoding::FloatPlanes] {
                let mut planes = Vec::new();
                split(encoding, dtype, &data, &mut planes);
                let views: Vec<&[u8]> = planes.iter().map(Vec::as_slice).collect();
                let mut back = vec![0; data.len()];
                merge(encoding, dtype, &views, &mut back);
                assert_eq!(back, data, "{dtype:?} {encoding:?}");
            }
        }
    }

    #[test]
    fn delta_round_trips() {
        let plane = [5u8, 3, 250, 0, 0, 7];
        let mut d = Vec::new();
        delta_encode(&plane, 1, &mut d);
        assert_eq!(d, [5, 254, 247, 6, 0, 7]);
        delta_decode(&mut d, 1);
        assert_eq!(d, plane);
        delta_encode(&plane, 2, &mut d);
        assert_eq!(d, [5, 3, 245, 253, 6, 7]);
        delta_decode(&mut d, 2);
        assert_eq!(d, plane);
        delta_encode(&plane, 9, &mut d);
        assert_eq!(d, plane);
    }

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

    #[test]
    fn noise_is_stored_raw_and_structure_is_compressed() {
        let mut enc = ChunkEncoder::new().unwrap();
        let mut x = 1u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        let mut out = Vec::new();
        assert_eq!(enc.encode_plane(&noise, 64, false, &mut out).unwrap(), PlaneEntry(Codec::Raw, 4096));
        let ramp: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        let PlaneEntry(codec, len) = enc.encode_plane(&ramp, 64, false, &mut out).unwrap();
        assert_eq!(codec, Codec::DeltaZstd);
        assert!(len < 100, "{len}");
        let mut dec = ChunkDecoder::new().unwrap();
        let mut back = vec![0; 4096];
        decode_plane(&mut dec.zstd, &mut dec.frame, PlaneEntry(codec, len), 64, &out[4096..], &mut back).unwrap();
        assert_eq!(back, ramp);
    }

    #[test]
    fn a_plane_of_row_plus_column_levels_is_predicted_and_round_trips() {
        // Exponent-like bytes: a level per row plus one per column, plus a little noise.
        let (rows, row) = (64usize, 300usize);
        let mut x = 7u64;
        let plane: Vec<u8> = (0..rows * row)
            .map(|i| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let noise = ((x >> 60) % 3) as u8;
                100u8.wrapping_add((i / row * 7 % 23) as u8).wrapping_add((i % row * 13 % 31) as u8) + noise
            })
            .collect();
        let mut enc = ChunkEncoder::new().unwrap();
        let mut out = Vec::new();
        let entry = enc.encode_plane(&plane, row, true, &mut out).unwrap();
        assert_eq!(entry.0, Codec::RankOneZstd);
        // Without the prediction the same plane codes larger.
        let mut plain = Vec::new();
        let without = enc.encode_plane(&plane, row, false, &mut plain).unwrap();
        assert!(entry.1 < without.1, "{entry:?} vs {without:?}");
        let mut dec = ChunkDecoder::new().unwrap();
        let mut back = vec![0; plane.len()];
        decode_plane(&mut dec.zstd, &mut dec.frame, entry, row, &out, &mut back).unwrap();
        assert_eq!(back, plane);
        // A short last row round-trips too.
        let short = &plane[..plane.len() - 17];
        let mut frame = Vec::new();
        rank_one_encode(short, row, &mut frame);
        assert_eq!(frame.len(), row + rows + short.len());
        let mut back = vec![0; short.len()];
        rank_one_decode(&frame, row, &mut back);
        assert_eq!(back, short);
    }

    #[test]
    fn literal_frames_are_ordinary_zstd() {
        let mut lit = LiteralCompressor::new(ZSTD_LEVEL).unwrap();
        let src: Vec<u8> = (0..10_000u32).map(|i| (i % 7 == 0) as u8 + 120).collect();
        let mut out = Vec::new();
        for block in [128 << 10, 1 << 10] {
            // Twice: the context must be reusable.
            lit.compress(&src, block, &mut out).unwrap();
            assert!(out.len() < src.len() / 4);
            assert_eq!(zstd::bulk::decompress(&out, src.len()).unwrap(), src);
        }
    }
}

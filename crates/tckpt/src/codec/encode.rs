//! Encoding chunks: each plane stored the cheapest way found (raw, or one zstd frame of the
//! plane after a filter, with the coder that does best on a sample of it). The choice of
//! codec is the writer's policy; a reader only follows the index.

use std::io;

use zstd::zstd_safe::CParameter;

use super::estimate::{choose_filter, estimate_bits, Filter, RAW_ENTROPY_BITS};
use super::filter::{delta_encode, rank_one_encode};
use super::literals::LiteralCompressor;
use super::planes::split;
use crate::dtype::Dtype;
use crate::layout::{Codec, Encoding, PlaneEntry};

/// zstd level for both coders. Level 1 codes as well as 3 on planes (the work is in the
/// entropy coder, which the level barely changes) and is faster.
pub(super) const ZSTD_LEVEL: i32 = 1;

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

/// Fewest rows in a chunk's plane for a rank-one prediction to be tried: its predictions
/// cost a byte per column and per row, and a median of a few rows predicts little.
const RANK_ONE_MIN_ROWS: usize = 16;

/// How much lower (as a fraction) the estimate after a rank-one prediction must be than the
/// best other filter's: it costs one more pass over the plane to decode.
const RANK_ONE_MARGIN: f64 = 0.02;

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

#[cfg(test)]
mod tests {
    use super::super::decode::ChunkDecoder;
    use super::super::filter::rank_one_decode;
    use super::*;

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
        dec.decode_plane(PlaneEntry(codec, len), 64, &out[4096..], &mut back);
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
        dec.decode_plane(entry, row, &out, &mut back);
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
}

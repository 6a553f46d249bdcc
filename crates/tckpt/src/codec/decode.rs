//! Decoding chunks: each plane as its index entry says, then the planes merged back into
//! whole elements.

use std::io;

use super::filter::{delta_decode, rank_one_decode};
use super::planes::merge;
use crate::dtype::Dtype;
use crate::layout::{rank_one_len, Codec, Encoding, PlaneEntry};

/// Per-thread state for decoding chunks.
pub(crate) struct ChunkDecoder {
    zstd: zstd::bulk::Decompressor<'static>,
    planes: Vec<Vec<u8>>,
    /// A rank-one frame's decoded bytes (predictions and residuals).
    frame: Vec<u8>,
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

#[cfg(test)]
impl ChunkDecoder {
    /// Decodes one plane on its own, for the encoder's tests.
    pub(super) fn decode_plane(&mut self, entry: PlaneEntry, row: usize, stored: &[u8], out: &mut [u8]) {
        decode_plane(&mut self.zstd, &mut self.frame, entry, row, stored, out).unwrap();
    }
}

/// Why a plane did not decode: its position in the chunk, its offset in the chunk's stored
/// bytes, and what went wrong.
#[derive(Debug)]
pub(crate) struct PlaneError {
    pub plane: usize,
    pub offset: u64,
    pub reason: PlaneFault,
}

/// What went wrong decoding one plane.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlaneFault {
    /// zstd refused the frame.
    #[error("{0}")]
    Zstd(io::Error),
    /// The frame decoded to another length than the index says.
    #[error("{decoded} bytes decoded, {expected} expected")]
    Length { decoded: usize, expected: usize },
    /// A rank-one plane whose rows the codec does not apply to (validation rules it out).
    #[error("rank-one plane of {len} bytes with rows of {row}")]
    RankOneShape { len: usize, row: usize },
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
) -> Result<(), PlaneFault> {
    match codec {
        Codec::Raw => out.copy_from_slice(stored),
        Codec::Zstd | Codec::DeltaZstd | Codec::RowDeltaZstd => {
            let n = zstd.decompress_to_buffer(stored, out).map_err(PlaneFault::Zstd)?;
            if n != out.len() {
                return Err(PlaneFault::Length { decoded: n, expected: out.len() });
            }
            delta_decode(out, codec.lag(row));
        }
        Codec::RankOneZstd => {
            // Validation checked that the codec applies to this plane and row.
            let len = rank_one_len(out.len() as u64, row as u64)
                .ok_or(PlaneFault::RankOneShape { len: out.len(), row })? as usize;
            frame.resize(len, 0);
            let n = zstd.decompress_to_buffer(stored, &mut frame[..]).map_err(PlaneFault::Zstd)?;
            if n != len {
                return Err(PlaneFault::Length { decoded: n, expected: len });
            }
            rank_one_decode(frame, row, out);
        }
    }
    Ok(())
}

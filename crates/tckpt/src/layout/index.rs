//! The index as it is on disk (what each tensor's entry says: encoding, chunks, planes and
//! their codecs, checksums), and the trusted form a reader uses once it is validated.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dtype::Dtype;

/// How a tensor's elements are laid out in planes before entropy coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Encoding {
    /// One plane: the raw little-endian bytes as they are.
    Bytes,
    /// One plane per byte of the element: plane k holds byte k (little-endian) of every element.
    Planes,
    /// As `Planes`, after rotating each element left by one bit within its width, which moves
    /// the sign bit to the bottom so that the top plane holds exponent bits only.
    FloatPlanes,
}

impl Encoding {
    /// Planes per chunk.
    pub(crate) fn planes(self, dtype: Dtype) -> usize {
        match self {
            Encoding::Bytes => 1,
            Encoding::Planes | Encoding::FloatPlanes => dtype.size(),
        }
    }

    /// Bytes of one row (the last dimension; 1 for a scalar) in each plane. Saturates: a
    /// tensor with another dimension of 0 may claim any last dimension, and has no chunks.
    pub(crate) fn row_len(self, dtype: Dtype, last_dim: u64) -> u64 {
        match self {
            Encoding::Bytes => last_dim.saturating_mul(dtype.size() as u64),
            Encoding::Planes | Encoding::FloatPlanes => last_dim,
        }
    }

    /// Raw length of each plane of a chunk of `elems` elements.
    pub(crate) fn plane_len(self, dtype: Dtype, elems: u64) -> u64 {
        match self {
            Encoding::Bytes => elems * dtype.size() as u64,
            Encoding::Planes | Encoding::FloatPlanes => elems,
        }
    }
}

/// How one plane of one chunk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Codec {
    /// The plane's bytes as they are.
    Raw,
    /// One zstd frame of the plane.
    Zstd,
    /// One zstd frame of the plane's byte-wise differences: `d[0] = p[0]`,
    /// `d[i] = p[i] - p[i-1]` (wrapping).
    DeltaZstd,
    /// One zstd frame of the differences between rows: `d[i] = p[i] - p[i-r]` (wrapping),
    /// `d[i] = p[i]` for `i < r`, where `r` is the tensor's row length in this plane.
    RowDeltaZstd,
    /// Version 3 on. One zstd frame of `c | w | d`: `c` (`r` bytes) a prediction per column,
    /// `w` (`ceil(L / r)` bytes) one per row, and `d[i] = p[i] - c[i mod r] - w[i div r]`
    /// (wrapping), where `L` is the plane's length and `r` the tensor's row length in this
    /// plane. For planes whose values are about a row's level plus a column's, such as the
    /// exponents of an optimizer's moments (close to rank one, as Adafactor observes).
    RankOneZstd,
}

impl Codec {
    /// The distance of the differences this codec takes: 0 for none.
    pub(crate) fn lag(self, row: usize) -> usize {
        match self {
            Codec::Raw | Codec::Zstd => 0,
            Codec::DeltaZstd => 1,
            Codec::RowDeltaZstd => row,
            // Not a difference: see `rank_one_len`.
            Codec::RankOneZstd => 0,
        }
    }
}

/// Bytes a `RankOneZstd` frame decodes to for a plane of `len` bytes with rows of `row`
/// bytes: the column predictions, the row predictions, the residuals; `None` where the codec
/// does not apply (rows of fewer than 2 bytes, or fewer than 2 rows).
pub(crate) fn rank_one_len(len: u64, row: u64) -> Option<u64> {
    (row >= 2 && len >= row.checked_mul(2)?).then(|| row + len.div_ceil(row) + len)
}

/// One plane's entry in the index: `[codec, stored length]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PlaneEntry(pub Codec, pub u64);

/// One tensor's entry in the index, as it is on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Entry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub encoding: Encoding,
    pub offset: u64,
    pub stored_len: u64,
    pub raw_len: u64,
    /// Version 1 only: xxh3-64 of the tensor's raw bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xxh3: Option<String>,
    pub chunk_elems: u64,
    /// Version 2 only: xxh3-64 of each chunk's raw bytes, one per entry of `chunks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_xxh3: Option<Vec<String>>,
    pub chunks: Vec<Vec<PlaneEntry>>,
}

/// The index, as it is on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Index {
    pub metadata: BTreeMap<String, String>,
    pub tensors: Vec<Entry>,
}

/// What a reader tells about one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name, unique in the file.
    pub name: String,
    /// Its element type.
    pub dtype: Dtype,
    /// Its dimensions; empty for a scalar.
    pub shape: Vec<usize>,
    /// Bytes it takes uncompressed: the product of the shape times the element size.
    pub raw_len: u64,
    /// Bytes its record takes in the file.
    pub stored_len: u64,
}

/// What a tensor's checksums cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Checksum {
    /// Version 1: xxh3-64 of the whole tensor's raw bytes.
    Tensor(u64),
    /// Version 2: xxh3-64 of each chunk's raw bytes, in chunk order.
    Chunks(Vec<u64>),
}

/// A tensor's entry after validation: the reader trusts every number in it.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub encoding: Encoding,
    /// Row length in each plane, for `RowDeltaZstd`.
    pub row: usize,
    pub offset: u64,
    pub checksum: Checksum,
    pub chunk_elems: u64,
    pub chunks: Vec<Vec<PlaneEntry>>,
}

impl Layout {
    /// Raw bytes of chunk `c` of a tensor of `raw_len` bytes of `elem`-byte elements.
    pub(crate) fn chunk_raw_len(&self, c: usize, raw_len: u64, elem: u64) -> u64 {
        let numel = raw_len / elem;
        self.chunk_elems.min(numel - c as u64 * self.chunk_elems) * elem
    }
}

/// Formats a checksum as the index stores it.
pub(crate) fn hex64(x: u64) -> String {
    format!("{x:016x}")
}

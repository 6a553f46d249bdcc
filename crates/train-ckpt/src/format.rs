//! The file format's constants, header, trailer and index, and the validation that turns an
//! index read from disk into trusted tensor layouts. Pure: no I/O here.
//!
//! ```text
//! 0                 8           12        16                                 I            I+N       I+N+32
//! +-----------------+-----------+---------+-- tensor records ---------------+------------+--------------+
//! | MAGIC (8 bytes) | version   | flags   | chunk 0: plane 0 | plane 1 | .. | index:     | trailer      |
//! | 89 'TRNCK' \r\n | u32 LE =2 | u32 = 0 | chunk 1: ...     (tensor 0)    | JSON,      | (32 bytes,   |
//! |                 |           |         | chunk 0: ...     (tensor 1) .. | N bytes    | see Trailer) |
//! +-----------------+-----------+---------+----------------------------------+------------+--------------+
//! ```
//!
//! `docs/compressed-format.md` is the specification; this module implements it.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::{invalid, Error, Result};
use crate::Dtype;

/// First 8 bytes of every file. The non-ASCII first byte marks the file as binary (and is lost
/// by 7-bit channels); `\r\n` is mangled by newline conversion, so a damaged copy is caught
/// before any other field is trusted, as PNG does.
pub const MAGIC: [u8; 8] = *b"\x89TRNCK\r\n";

/// Last 8 bytes of every file: a writer that stopped before the end leaves none.
pub const TRAILER_MAGIC: [u8; 8] = *b"TRNCKIDX";

/// The format version this crate writes and the newest it reads. Version 2 replaced each
/// tensor's checksum with one per chunk, so that a reader checks every chunk on the thread
/// that decoded it, while its bytes are still in that core's cache. Version 3 added the
/// `rank_one_zstd` codec (a plane less a per-column and a per-row prediction).
pub const FORMAT_VERSION: u32 = 3;

/// The oldest format version this crate reads. Version 1 files (one checksum per tensor) are
/// read, never written.
pub const MIN_FORMAT_VERSION: u32 = 1;

/// Bytes before the first tensor record: magic, version, flags.
pub const HEADER_LEN: u64 = 16;

/// Bytes of the trailer: index offset, index length, index checksum, trailer magic.
pub const TRAILER_LEN: u64 = 32;

/// Largest index a reader loads, in bytes. The index is read whole before its checksum can be
/// checked, so this caps what a damaged trailer can make a reader allocate. 256 MiB holds
/// about 10 million plane entries, i.e. several TiB of tensors at the default chunk size.
pub const MAX_INDEX_LEN: u64 = 256 << 20;

/// Most tensors in one file. Large language models with optimizer state have tens of
/// thousands; a million leaves room and bounds the name table a reader builds.
pub const MAX_TENSORS: usize = 1 << 20;

/// Most dimensions of one tensor: NumPy's limit (64 since NumPy 2.0), above PyTorch's.
pub const MAX_RANK: usize = 64;

/// Largest chunk, in raw bytes. A reader holds a few chunks per thread at a time, so this
/// bounds its memory whatever the file claims; writers use 1 MiB by default.
pub const MAX_CHUNK_BYTES: u64 = 64 << 20;

/// Largest ratio of a compressed plane's raw length to its stored length. A zstd block
/// decodes to at most 128 KiB and takes at least 4 bytes (an RLE block: 3-byte header and the
/// byte), so no valid zstd frame expands more than 32768 times; a larger claim is a lie that
/// would only make the reader allocate for nothing.
pub const MAX_EXPANSION: u64 = 32768;

/// Whether `prefix` (the first bytes of a file, at least 8) starts like a file of this format.
/// Cheap: use it to tell this format from safetensors or a zstd frame before opening.
pub fn is_ckpt(prefix: &[u8]) -> bool {
    prefix.starts_with(&MAGIC)
}

/// The 16-byte header a writer puts first.
pub(crate) fn header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    // h[12..16]: flags, none defined in versions 1 to 3.
    h
}

/// Checks the magic, the version and the flags; returns the version.
pub(crate) fn check_header(h: &[u8; HEADER_LEN as usize]) -> Result<u32> {
    if h[..8] != MAGIC {
        return Err(Error::NotACheckpoint);
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(Error::UnsupportedVersion { found: version, supported: FORMAT_VERSION });
    }
    let flags = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
    if flags != 0 {
        return Err(Error::UnsupportedFlags { flags });
    }
    Ok(version)
}

/// The fixed-size end of the file: where the index is and what it hashes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trailer {
    /// Offset of the index's first byte from the start of the file.
    pub index_offset: u64,
    /// The index's length in bytes.
    pub index_len: u64,
    /// xxh3-64 of the index bytes.
    pub index_xxh3: u64,
}

impl Trailer {
    pub(crate) fn to_bytes(self) -> [u8; TRAILER_LEN as usize] {
        let mut t = [0u8; TRAILER_LEN as usize];
        t[0..8].copy_from_slice(&self.index_offset.to_le_bytes());
        t[8..16].copy_from_slice(&self.index_len.to_le_bytes());
        t[16..24].copy_from_slice(&self.index_xxh3.to_le_bytes());
        t[24..32].copy_from_slice(&TRAILER_MAGIC);
        t
    }

    /// Parses a trailer and checks it against the file's length: the index must lie between
    /// the header and the trailer and end exactly where the trailer starts.
    pub(crate) fn parse(t: &[u8; TRAILER_LEN as usize], file_len: u64) -> Result<Trailer> {
        if t[24..32] != TRAILER_MAGIC {
            return Err(Error::BadTrailer);
        }
        let word = |i: usize| u64::from_le_bytes(t[i..i + 8].try_into().expect("8 bytes"));
        let trailer = Trailer { index_offset: word(0), index_len: word(8), index_xxh3: word(16) };
        let end = trailer.index_offset.checked_add(trailer.index_len).and_then(|e| e.checked_add(TRAILER_LEN));
        if trailer.index_offset < HEADER_LEN || end != Some(file_len) {
            return Err(Error::IndexOutOfBounds { offset: trailer.index_offset, len: trailer.index_len, file_len });
        }
        if trailer.index_len > MAX_INDEX_LEN {
            return Err(Error::IndexTooLarge { len: trailer.index_len, max: MAX_INDEX_LEN });
        }
        Ok(trailer)
    }
}

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

fn parse_hex64(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

/// Checks an index of a file of format `version` against the format's rules and the place of
/// the tensor records, `HEADER_LEN..records_end`. Records must tile that range in index order,
/// with no gap.
pub(crate) fn validate(index: Index, records_end: u64, version: u32) -> Result<(Vec<TensorInfo>, Vec<Layout>)> {
    if index.tensors.len() > MAX_TENSORS {
        return Err(Error::TooManyTensors { count: index.tensors.len(), max: MAX_TENSORS });
    }
    let mut names = HashSet::with_capacity(index.tensors.len());
    let mut infos = Vec::with_capacity(index.tensors.len());
    let mut layouts = Vec::with_capacity(index.tensors.len());
    let mut next = HEADER_LEN;
    for entry in index.tensors {
        if !names.insert(entry.name.clone()) {
            return Err(Error::DuplicateName { name: entry.name });
        }
        if entry.offset != next {
            return Err(invalid(&entry.name, format!("record at offset {}, expected {next}", entry.offset)));
        }
        let (info, layout) = validate_entry(entry, version)?;
        next = next.checked_add(info.stored_len).filter(|&n| n <= records_end).ok_or_else(|| {
            invalid(
                &info.name,
                format!("record of {} bytes at offset {next} runs past the index at {records_end}", info.stored_len),
            )
        })?;
        infos.push(info);
        layouts.push(layout);
    }
    if next != records_end {
        return Err(Error::InvalidTensor {
            name: infos.last().map_or_else(String::new, |i| i.name.clone()),
            reason: format!("tensor records end at {next} but the index starts at {records_end}"),
        });
    }
    Ok((infos, layouts))
}

/// Checks one entry on its own: shape, lengths, encoding, chunks, checksum text.
fn validate_entry(e: Entry, version: u32) -> Result<(TensorInfo, Layout)> {
    let name = e.name.as_str();
    if e.shape.len() > MAX_RANK {
        return Err(invalid(name, format!("rank {} exceeds the limit of {MAX_RANK}", e.shape.len())));
    }
    let elem = e.dtype.size() as u64;
    let numel = e
        .shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .ok_or_else(|| invalid(name, format!("shape {:?} overflows", e.shape)))?;
    let raw_len = numel
        .checked_mul(elem)
        .filter(|&r| usize::try_from(r).is_ok())
        .ok_or_else(|| invalid(name, format!("shape {:?} overflows", e.shape)))?;
    if raw_len != e.raw_len {
        return Err(invalid(
            name,
            format!("raw_len {} but dtype {:?} and shape {:?} make {raw_len}", e.raw_len, e.dtype, e.shape),
        ));
    }
    let shape = e
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| invalid(name, format!("shape {:?} does not fit this machine", e.shape)))?;
    match e.encoding {
        Encoding::Bytes => {}
        Encoding::Planes if e.dtype.size() > 1 => {}
        Encoding::FloatPlanes if e.dtype.is_float() => {}
        other => return Err(invalid(name, format!("encoding {other:?} does not apply to {:?}", e.dtype))),
    }
    if e.chunk_elems == 0 || e.chunk_elems.saturating_mul(elem) > MAX_CHUNK_BYTES {
        return Err(invalid(
            name,
            format!("chunk of {} elements outside 1..={}", e.chunk_elems, MAX_CHUNK_BYTES / elem),
        ));
    }
    let n_chunks = numel.div_ceil(e.chunk_elems);
    if e.chunks.len() as u64 != n_chunks {
        return Err(invalid(
            name,
            format!(
                "{} chunks listed, {numel} elements in chunks of {} make {n_chunks}",
                e.chunks.len(),
                e.chunk_elems
            ),
        ));
    }
    let planes = e.encoding.planes(e.dtype);
    let row = e.encoding.row_len(e.dtype, e.shape.last().copied().unwrap_or(1));
    let mut stored = 0u64;
    for (c, chunk) in e.chunks.iter().enumerate() {
        let elems = e.chunk_elems.min(numel - c as u64 * e.chunk_elems);
        let raw = e.encoding.plane_len(e.dtype, elems);
        if chunk.len() != planes {
            return Err(invalid(name, format!("chunk {c} has {} planes, expected {planes}", chunk.len())));
        }
        for (p, &PlaneEntry(codec, len)) in chunk.iter().enumerate() {
            let ok = match codec {
                Codec::Raw => len == raw,
                Codec::Zstd | Codec::DeltaZstd | Codec::RowDeltaZstd => {
                    len > 0 && len <= raw && raw <= len.saturating_mul(MAX_EXPANSION)
                }
                Codec::RankOneZstd => {
                    version >= 3
                        && rank_one_len(raw, row).is_some_and(|decoded| {
                            len > 0 && len <= raw && decoded <= len.saturating_mul(MAX_EXPANSION)
                        })
                }
            };
            if !ok {
                return Err(invalid(
                    name,
                    format!("chunk {c}, plane {p}: {codec:?} plane of {len} bytes for {raw} raw bytes"),
                ));
            }
            stored = stored.checked_add(len).ok_or_else(|| invalid(name, "stored length overflows"))?;
        }
    }
    if stored != e.stored_len {
        return Err(invalid(name, format!("stored_len {} but its planes add up to {stored}", e.stored_len)));
    }
    let hex =
        |s: &str| parse_hex64(s).ok_or_else(|| invalid(name, format!("checksum {s:?} is not 16 lowercase hex digits")));
    let checksum = match (version, &e.xxh3, &e.chunk_xxh3) {
        (1, Some(x), None) => Checksum::Tensor(hex(x)?),
        (2.., None, Some(sums)) if sums.len() == e.chunks.len() => {
            Checksum::Chunks(sums.iter().map(|s| hex(s)).collect::<Result<_>>()?)
        }
        (2.., None, Some(sums)) => {
            return Err(invalid(name, format!("{} chunk checksums for {} chunks", sums.len(), e.chunks.len())))
        }
        (1, _, _) => return Err(invalid(name, "a version-1 entry needs `xxh3` and no `chunk_xxh3`")),
        _ => return Err(invalid(name, format!("a version-{version} entry needs `chunk_xxh3` and no `xxh3`"))),
    };
    Ok((
        TensorInfo { name: e.name, dtype: e.dtype, shape, raw_len, stored_len: stored },
        Layout {
            encoding: e.encoding,
            // At most raw_len (which fits in usize) for a tensor with elements; 1 for a scalar.
            row: usize::try_from(row).unwrap_or(usize::MAX),
            offset: e.offset,
            checksum,
            chunk_elems: e.chunk_elems,
            chunks: e.chunks,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        // 10 F32 elements in chunks of 4: planes of 4, 4 and 2 bytes.
        let chunk = |n| vec![PlaneEntry(Codec::Raw, n); 4];
        Entry {
            name: "w".into(),
            dtype: Dtype::F32,
            shape: vec![2, 5],
            encoding: Encoding::FloatPlanes,
            offset: HEADER_LEN,
            stored_len: 40,
            raw_len: 40,
            xxh3: None,
            chunk_elems: 4,
            chunk_xxh3: Some(vec![hex64(7), hex64(8), hex64(9)]),
            chunks: vec![chunk(4), chunk(4), chunk(2)],
        }
    }

    fn check(e: Entry) -> Result<(Vec<TensorInfo>, Vec<Layout>)> {
        let end = e.offset + e.stored_len;
        validate(Index { metadata: BTreeMap::new(), tensors: vec![e] }, end, FORMAT_VERSION)
    }

    fn reason(e: Entry) -> String {
        check(e).unwrap_err().to_string()
    }

    #[test]
    fn header_is_magic_version_then_zero_flags() {
        assert_eq!(header(), *b"\x89TRNCK\r\n\x03\x00\x00\x00\x00\x00\x00\x00");
        assert_eq!(check_header(&header()).unwrap(), 3);
        for older in [1, 2] {
            let mut h = header();
            h[8] = older;
            assert_eq!(check_header(&h).unwrap(), u32::from(older));
        }
        assert!(is_ckpt(&header()));
    }

    #[test]
    fn rejects_newer_version_and_unknown_flags() {
        let mut h = header();
        h[8] = 4;
        assert!(matches!(check_header(&h), Err(Error::UnsupportedVersion { found: 4, .. })));
        h[8] = 0;
        assert!(matches!(check_header(&h), Err(Error::UnsupportedVersion { found: 0, .. })));
        let mut h = header();
        h[12] = 1;
        assert!(matches!(check_header(&h), Err(Error::UnsupportedFlags { flags: 1 })));
    }

    #[test]
    fn trailer_round_trips_and_must_end_the_file() {
        let t = Trailer { index_offset: 100, index_len: 20, index_xxh3: 0xabc };
        assert_eq!(Trailer::parse(&t.to_bytes(), 152).unwrap(), t);
        assert!(matches!(Trailer::parse(&t.to_bytes(), 153), Err(Error::IndexOutOfBounds { .. })));
        let huge = Trailer { index_offset: 16, index_len: u64::MAX - 20, index_xxh3: 0 };
        assert!(matches!(Trailer::parse(&huge.to_bytes(), 100), Err(Error::IndexOutOfBounds { .. })));
    }

    #[test]
    fn accepts_a_consistent_entry() {
        let (infos, layouts) = check(entry()).unwrap();
        assert_eq!(infos[0].shape, [2, 5]);
        assert_eq!(layouts[0].checksum, Checksum::Chunks(vec![7, 8, 9]));
    }

    #[test]
    fn each_version_takes_its_own_checksums() {
        let mut v1 = entry();
        v1.chunk_xxh3 = None;
        v1.xxh3 = Some(hex64(5));
        let end = v1.offset + v1.stored_len;
        let index = |e: &Entry| Index { metadata: BTreeMap::new(), tensors: vec![e.clone()] };
        let (_, layouts) = validate(index(&v1), end, 1).unwrap();
        assert_eq!(layouts[0].checksum, Checksum::Tensor(5));
        assert!(validate(index(&v1), end, 2).unwrap_err().to_string().contains("version-2 entry"));
        assert!(validate(index(&v1), end, 3).unwrap_err().to_string().contains("version-3 entry"));
        assert!(validate(index(&entry()), end, 1).unwrap_err().to_string().contains("version-1 entry"));
        let mut both = entry();
        both.xxh3 = Some(hex64(5));
        assert!(reason(both).contains("version-3 entry"));
        let mut short = entry();
        short.chunk_xxh3.as_mut().unwrap().pop();
        assert!(reason(short).contains("2 chunk checksums for 3 chunks"));
    }

    #[test]
    fn rejects_inconsistent_entries() {
        let mut e = entry();
        e.raw_len = 44;
        assert!(reason(e).contains("raw_len 44"));
        let mut e = entry();
        e.shape = vec![u64::MAX, 2];
        assert!(reason(e).contains("overflows"));
        let mut e = entry();
        e.shape = vec![1; MAX_RANK + 1];
        assert!(reason(e).contains("rank"));
        let mut e = entry();
        e.chunks.pop();
        assert!(reason(e).contains("2 chunks listed"));
        let mut e = entry();
        e.chunks[1][0] = PlaneEntry(Codec::Raw, 5);
        assert!(reason(e).contains("chunk 1, plane 0"));
        let mut e = entry();
        e.chunks[2][3] = PlaneEntry(Codec::Zstd, 3);
        e.stored_len = 41;
        assert!(reason(e).contains("chunk 2, plane 3"));
        let mut e = entry();
        e.chunk_elems = MAX_CHUNK_BYTES;
        assert!(reason(e).contains("outside"));
        let mut e = entry();
        e.chunk_xxh3.as_mut().unwrap()[1] = "XYZ".into();
        assert!(reason(e).contains("hex"));
        let mut e = entry();
        e.dtype = Dtype::I32;
        assert!(reason(e).contains("does not apply"));
    }

    #[test]
    fn rank_one_planes_need_version_3_and_two_rows() {
        // A [4, 5] F32 tensor in one chunk: planes of 20 bytes, rows of 5.
        let mut e = entry();
        e.shape = vec![4, 5];
        e.raw_len = 80;
        e.stored_len = 80 - 20 + 6;
        e.chunk_elems = 20;
        e.chunk_xxh3 = Some(vec![hex64(1)]);
        e.chunks = vec![vec![PlaneEntry(Codec::Raw, 20); 4]];
        e.chunks[0][3] = PlaneEntry(Codec::RankOneZstd, 6);
        assert!(check(e.clone()).is_ok());
        let end = e.offset + e.stored_len;
        let index = Index { metadata: BTreeMap::new(), tensors: vec![e.clone()] };
        assert!(validate(index, end, 2).unwrap_err().to_string().contains("RankOneZstd"));
        // One row only, or rows of one byte: the codec does not apply.
        let mut one_row = e.clone();
        one_row.shape = vec![1, 20];
        assert!(reason(one_row).contains("RankOneZstd"));
        let mut column = e;
        column.shape = vec![20, 1];
        assert!(reason(column).contains("RankOneZstd"));
        assert_eq!(rank_one_len(20, 5), Some(5 + 4 + 20));
        assert_eq!(rank_one_len(21, 5), Some(5 + 5 + 21));
        assert_eq!(rank_one_len(9, 5), None);
        assert_eq!(rank_one_len(u64::MAX, u64::MAX / 2 + 1), None);
    }

    #[test]
    fn rejects_records_that_do_not_tile_the_data() {
        let e = entry();
        let err = validate(
            Index { metadata: BTreeMap::new(), tensors: vec![e.clone()] },
            e.offset + e.stored_len + 1,
            FORMAT_VERSION,
        )
        .unwrap_err();
        assert!(err.to_string().contains("index starts at"), "{err}");
        let mut twice = e.clone();
        twice.offset += e.stored_len;
        let err = validate(
            Index { metadata: BTreeMap::new(), tensors: vec![e.clone(), twice] },
            e.offset + 2 * e.stored_len,
            FORMAT_VERSION,
        )
        .unwrap_err();
        assert!(matches!(err, Error::DuplicateName { .. }));
    }
}

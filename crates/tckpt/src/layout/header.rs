//! The format's constants and limits, and the fixed-size header and trailer that frame a
//! file: the magic, the version and flags first; the index's place and checksum last.

use crate::error::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! What kind a checkpoint file is: told by its content ([`FileKind::sniff`]), each kind by
//! a structure the others do not share, and by its name only where the content matches none.

use std::path::Path;

use serde::Serialize;

use crate::error::Error;
use crate::names::{COMPRESSED_SUFFIX, PLAIN_SUFFIX};
use crate::sharded::{Index, INDEX_SUFFIX};

/// File-name endings of `torch.save` files.
const PYTORCH_SUFFIXES: &[&str] = &[".pt", ".pth", ".bin"];
/// Bytes of a file's start that [`FileKind::sniff`] looks at: a safetensors header length
/// and the header's first byte, or a magic.
pub const SNIFF_BYTES: usize = 16;
/// The safetensors crate's own cap on the JSON header; a longer one is no safetensors
/// header, and the reader refuses it before reading it.
pub(super) const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The file kinds a checkpoint can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// Plain safetensors (ours, or anyone's).
    Safetensors,
    /// The compressed format.
    Compressed,
    /// A `torch.save` pickle (zip or legacy).
    Pytorch,
    /// A sharded checkpoint's index (`*.index.json`, see [`crate::sharded`]), read as one
    /// checkpoint through its shards.
    Sharded,
}

impl FileKind {
    /// The kinds a file of `len` bytes can be, from its first bytes (at least
    /// [`SNIFF_BYTES`] of them when it has that many), most conclusive first; each by a
    /// structure no other kind shares:
    ///
    /// - the compressed format: its magic ([`tckpt::is_ckpt`]);
    /// - a zip archive (`torch.save` since PyTorch 1.6): `PK\x03\x04`;
    /// - safetensors: a little-endian u64 header length within the 100 MB cap and the file,
    ///   then the header's `{` at byte 8;
    /// - a pickle (legacy `torch.save`): PROTO (`0x80`) and a protocol `torch.save` writes
    ///   (2 to 5).
    ///
    /// Only the last two can both match (a header length of 0x280, 0x380, 0x480 or 0x580
    /// mod 65536 starts with `0x80` and 2 to 5): the caller believes the one that parses.
    /// Empty when nothing matches.
    pub fn sniff(head: &[u8], len: u64) -> Vec<Self> {
        if tckpt::is_ckpt(head) {
            return vec![Self::Compressed];
        }
        if Index::is_index(head) {
            return vec![Self::Sharded];
        }
        if head.starts_with(b"PK\x03\x04") {
            return vec![Self::Pytorch];
        }
        let mut kinds = Vec::new();
        if let (Some(word), Some(b'{')) = (head.get(..8), head.get(8)) {
            let header = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            if header <= MAX_HEADER_BYTES && len.checked_sub(8).is_some_and(|rest| header <= rest) {
                kinds.push(Self::Safetensors);
            }
        }
        if head.first() == Some(&0x80) && head.get(1).is_some_and(|p| (2..=5).contains(p)) {
            kinds.push(Self::Pytorch);
        }
        kinds
    }

    /// The kind a file name claims: `.safetensors`, `.tckpt`, or `.pt`, `.pth`, `.bin`.
    pub(super) fn named(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_string_lossy();
        if name.ends_with(COMPRESSED_SUFFIX) {
            Some(Self::Compressed)
        } else if name.ends_with(INDEX_SUFFIX) {
            Some(Self::Sharded)
        } else if name.ends_with(PLAIN_SUFFIX) {
            Some(Self::Safetensors)
        } else if PYTORCH_SUFFIXES.iter().any(|e| name.ends_with(e)) {
            Some(Self::Pytorch)
        } else {
            None
        }
    }

    /// The kind a file of this name would be written as (for output paths, which do not
    /// exist yet).
    pub fn of_name(path: &Path) -> Result<Self, Error> {
        Self::named(path).ok_or_else(|| Error::Malformed {
            path: path.to_path_buf(),
            reason: format!(
                "unknown checkpoint format: expected a name ending in {PLAIN_SUFFIX}, {COMPRESSED_SUFFIX}, .pt, .pth or \
                 .bin"
            ),
        })
    }

    /// How the kind is called in messages.
    pub(super) fn describe(self) -> &'static str {
        match self {
            Self::Safetensors => "safetensors",
            Self::Compressed => "the compressed format (.tckpt)",
            Self::Pytorch => "a torch.save file (zip or pickle)",
            Self::Sharded => "a sharded checkpoint's index",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors head: the header length, then the header's first byte.
    fn safetensors_head(header: u64) -> Vec<u8> {
        let mut head = header.to_le_bytes().to_vec();
        head.extend_from_slice(b"{\"");
        head
    }

    #[test]
    fn each_kind_is_told_by_its_own_structure() {
        use FileKind::{Compressed, Pytorch, Safetensors};
        let legacy = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e];
        let cases: [(&[u8], u64, &[FileKind]); 10] = [
            (&tckpt::MAGIC, 100, &[Compressed]),
            (b"PK\x03\x04\x00\x00\x08\x08\x00", 100, &[Pytorch]),
            (&legacy, 1000, &[Pytorch]),
            (&safetensors_head(64), 72, &[Safetensors]),
            // Issue #21: a header of 128 bytes starts with 0x80 but no protocol follows.
            (&safetensors_head(128), 200, &[Safetensors]),
            // 0x280 bytes: 0x80 then 2, a pickle's PROTO 2 as well; the parse decides.
            (&safetensors_head(0x280), 0x300, &[Safetensors, Pytorch]),
            // A header longer than the file, or than the cap, is no safetensors header.
            (&safetensors_head(65), 72, &[]),
            (&safetensors_head(u64::MAX / 2), u64::MAX, &[]),
            (b"not a checkpoint", 16, &[]),
            (&[0x80, 0x01, 0, 0, 0, 0, 0, 0, 0], 9, &[]),
        ];
        for (head, len, kinds) in cases {
            assert_eq!(FileKind::sniff(head, len), kinds, "{head:02x?} of {len} bytes");
        }
    }
}

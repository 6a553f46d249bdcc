//! What verifying a checkpoint found ([`Verification`], [`Integrity`]), and how a compressed
//! file's tensors are grouped to be decoded together; `CheckpointFile::verify` reads them.

use serde::Serialize;

use super::entry::Entry;

/// How many tensor bytes `CheckpointFile::verify` decodes at once from a compressed file: enough for the
/// parallel decoder to keep both cores busy across many small tensors, small enough that
/// verifying a large checkpoint never holds much of it.
pub const VERIFY_GROUP_BYTES: u64 = 64 << 20;

/// How much of a file `CheckpointFile::verify` could check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Integrity {
    /// Every tensor and the metadata matched their checksums.
    Checked,
    /// Every tensor matched its checksum, but the metadata (epoch, step, losses, the tensor
    /// checksums themselves) is covered by none: a file of format version 1, which predates
    /// the metadata checksum ("v1: metadata not covered"). Never reported as checked: such a
    /// file may be a newer one with its checksum removed and its version set back.
    MetadataNotCovered,
    /// Every tensor was read, but the file carries no checksums to check them against.
    NotChecked,
}

/// What `CheckpointFile::verify` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Tensors read.
    pub tensors: usize,
    /// Whether they could be checked.
    pub integrity: Integrity,
}

impl Integrity {
    /// What a file whose tensors all matched (or were all read) can claim: checked only when
    /// its tensors are `checksummed` and its metadata is `covered` by its own checksum.
    pub(super) fn of(checksummed: bool, covered: bool) -> Self {
        match (checksummed, covered) {
            (true, true) => Integrity::Checked,
            (true, false) => Integrity::MetadataNotCovered,
            (false, _) => Integrity::NotChecked,
        }
    }
}

/// Consecutive runs of `entries` of at most `limit` bytes each (a larger tensor alone).
pub(super) fn groups<'a, 'e>(entries: &'a [&'e Entry], limit: u64) -> Vec<&'a [&'e Entry]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, e) in entries.iter().enumerate() {
        if i > start && bytes + e.bytes > limit {
            out.push(&entries[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += e.bytes;
    }
    if start < entries.len() {
        out.push(&entries[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(bytes: u64) -> Entry {
        Entry::new(format!("t{bytes}"), safetensors::tensor::Dtype::U8, vec![bytes as usize], bytes, 0)
    }

    #[test]
    fn groups_hold_consecutive_tensors_up_to_the_limit_and_a_larger_one_alone() {
        let owned: Vec<Entry> = [3, 4, 2, 10, 1, 1].into_iter().map(entry).collect();
        let entries: Vec<&Entry> = owned.iter().collect();
        let sizes: Vec<Vec<u64>> = groups(&entries, 8).iter().map(|g| g.iter().map(|e| e.bytes).collect()).collect();
        assert_eq!(sizes, [vec![3, 4], vec![2], vec![10], vec![1, 1]]);
        assert!(groups(&[], 8).is_empty());
    }

    #[test]
    fn only_checksummed_tensors_and_covered_metadata_read_as_checked() {
        assert_eq!(Integrity::of(true, true), Integrity::Checked);
        assert_eq!(Integrity::of(true, false), Integrity::MetadataNotCovered);
        assert_eq!(Integrity::of(false, false), Integrity::NotChecked);
    }
}

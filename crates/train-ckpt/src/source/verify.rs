//! What verifying a checkpoint found ([`Verification`], [`Integrity`]);
//! `CheckpointFile::verify` reads the tensors.

use serde::Serialize;

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

//! The one reader of checkpoint files, whatever wrote them: resume, `train plan` and every
//! `train ckpt` tool open files through [`CheckpointFile`], so they agree on what a file
//! holds and whether it is sound.
//!
//! | kind | told by | tensors | checked on read |
//! |---|---|---|---|
//! | ours, `*.safetensors` | a safetensors header, and `format` = `train.checkpoint` in the metadata | positioned reads, one at a time | each tensor's xxh3 and the metadata's own (version 2 on) |
//! | ours, `*.tckpt` | the compressed format's magic | decoded one at a time | the format's per-tensor and index checksums |
//! | foreign safetensors (Hugging Face, `safetensors.torch.save_file`) | a safetensors header, no `train.checkpoint` metadata | positioned reads | nothing: there are no checksums |
//! | `*.pt`, `*.pth`, `*.bin` (`torch.save`) | zip magic, or a pickle's PROTO 2 to 5 | read from the archive | nothing |
//!
//! A file's kind is told by its content ([`FileKind::sniff`]), each kind by a structure the
//! others do not share. Only a safetensors file whose header length is 0x280, 0x380, 0x480 or
//! 0x580 (mod 65536) also starts like a pickle (PROTO 2 to 5); it reads as whichever parses
//! (safetensors is tried first). The name
//! decides only when the content matches no kind (that kind's reader then says what is
//! wrong); where name and content disagree, the content wins and a warning says so.
//!
//! A `torch.save` file's weights are its model state dict; what it holds beside them (an
//! optimizer's state dict, a 0-d `loss`) is in [`CheckpointFile::other_entries`], and
//! [`CheckpointFile::pytorch_optimizer`] reads the optimizer state dict's structure.
//!
//! Opening reads the header (or the compressed format's index, or the pickle) once, checks
//! its sizes against the file's length before allocating, and refuses anything that is not a
//! regular file (a FIFO would block a reader forever). Tensor data is read only when asked for.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::tensor::Dtype;
use serde::Serialize;

use crate::format::{
    checksum_hex, Meta, MetaError, Role, CHECKSUMS_KEY, COMPRESSED_SUFFIX, METADATA_CHECKSUM_KEY, PLAIN_SUFFIX,
};
use crate::Error;

mod open;
mod pytorch;

use open::{open_compressed, open_plain, open_pytorch};
pub use pytorch::{Assigned, OptimizerSummary, ParamGroup, ParamState, PytorchOptimizer};

/// How many tensor bytes `verify` decodes at once from a compressed file: enough for the
/// parallel decoder to keep both cores busy across many small tensors, small enough that
/// verifying a large checkpoint never holds much of it.
pub const VERIFY_GROUP_BYTES: u64 = 64 << 20;
/// File-name endings of `torch.save` files.
const PYTORCH_SUFFIXES: &[&str] = &[".pt", ".pth", ".bin"];
/// Bytes of a file's start that [`FileKind::sniff`] looks at: a safetensors header length
/// and the header's first byte, or a magic.
pub const SNIFF_BYTES: usize = 16;

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
}

impl FileKind {
    /// The kinds a file of `len` bytes can be, from its first bytes (at least
    /// [`SNIFF_BYTES`] of them when it has that many), most conclusive first; each by a
    /// structure no other kind shares:
    ///
    /// - the compressed format: its magic ([`train_ckpt::is_ckpt`]);
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
        if train_ckpt::is_ckpt(head) {
            return vec![Self::Compressed];
        }
        if head.starts_with(b"PK\x03\x04") {
            return vec![Self::Pytorch];
        }
        let mut kinds = Vec::new();
        if let (Some(word), Some(b'{')) = (head.get(..8), head.get(8)) {
            let header = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            if header <= open::MAX_HEADER_BYTES && len.checked_sub(8).is_some_and(|rest| header <= rest) {
                kinds.push(Self::Safetensors);
            }
        }
        if head.first() == Some(&0x80) && head.get(1).is_some_and(|p| (2..=5).contains(p)) {
            kinds.push(Self::Pytorch);
        }
        kinds
    }

    /// The kind a file name claims: `.safetensors`, `.tckpt`, or `.pt`, `.pth`, `.bin`.
    fn named(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_string_lossy();
        if name.ends_with(COMPRESSED_SUFFIX) {
            Some(Self::Compressed)
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
    fn describe(self) -> &'static str {
        match self {
            Self::Safetensors => "safetensors",
            Self::Compressed => "the compressed format (.tckpt)",
            Self::Pytorch => "a torch.save file (zip or pickle)",
        }
    }
}

/// One tensor of a checkpoint. Serializes as `{name, role, dtype, shape, bytes}`, the dtype
/// by its safetensors name (`F32`, `BF16`, `I64`, ...).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// What it is for, given by the reader from the name.
    pub role: Role,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Its size in bytes.
    pub bytes: u64,
    /// Offset of its bytes from the start of a plain file's data section (0 otherwise).
    #[serde(skip)]
    begin: u64,
}

impl Entry {
    fn new(name: String, dtype: Dtype, shape: Vec<usize>, bytes: u64, begin: u64) -> Entry {
        Entry { role: Role::of(&name), name, dtype, shape, bytes, begin }
    }
}

/// Where an open checkpoint's tensor bytes come from.
enum Body {
    /// A plain file, read with positioned reads (no mapping: only what is asked for is read,
    /// and nothing stays resident in this process afterwards).
    Plain { file: File, data_start: u64 },
    /// The compressed format, whose reader decodes (and checks) one tensor at a time.
    Compressed(Box<std::sync::Mutex<train_ckpt::Reader<File>>>),
    /// A PyTorch archive.
    Pytorch(HashMap<String, pytorch_reader::Tensor>),
}

/// How much of a file [`CheckpointFile::verify`] could check.
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

/// What [`CheckpointFile::verify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Tensors read.
    pub tensors: usize,
    /// Whether they could be checked.
    pub integrity: Integrity,
}

/// What a file is opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Its weights (resume, convert, verify, plan): it must hold some; what a `torch.save`
    /// file holds beside them, and a load leaves out, is logged.
    Load,
    /// A report of what it holds.
    Inspect,
    /// A PyTorch optimizer state dict, with or without weights.
    Optimizer,
}

/// An opened checkpoint of any kind: header, metadata and checksums read (once) and
/// checked; tensors read one at a time, on demand, and checked where the file allows.
pub struct CheckpointFile {
    path: PathBuf,
    kind: FileKind,
    body: Body,
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
    /// The raw metadata map (a foreign file's own, or what a pickle records).
    metadata: HashMap<String, String>,
    /// `train`'s metadata, when the file is ours.
    meta: Option<Meta>,
    /// Per-tensor xxh3 (plain files of ours; the compressed format checks its own).
    checksums: Option<HashMap<String, String>>,
    /// A `torch.save` file's tensors outside the model's state dict (optimizer state, a 0-d
    /// loss), by their dotted path in the pickle.
    others: Vec<Entry>,
    others_by_name: HashMap<String, usize>,
    /// A `torch.save` file's pickle tree.
    pickle: Option<pytorch::Pickle>,
}

impl CheckpointFile {
    /// Opens `path`: refuses non-regular files, reads and validates the header (sizes
    /// checked against the file's length before anything is allocated), the metadata and
    /// the checksums. Tensor data is not read (but for the few bytes of a `torch.save`
    /// file's 0-d `epoch`/`loss` tensors).
    ///
    /// A file without model tensors is refused; [`Self::open_pytorch_optimizer`] opens a
    /// bare PyTorch optimizer state dict.
    pub fn open(path: &Path) -> Result<Self, Error> {
        Self::open_as(path, Purpose::Load)
    }

    /// Opens `path` as [`Self::open`] does, for `ckpt inspect`: a bare PyTorch optimizer
    /// state dict is accepted (no model tensors), and nothing is said about what a load
    /// would leave out (the report says it).
    pub(crate) fn open_to_inspect(path: &Path) -> Result<Self, Error> {
        Self::open_as(path, Purpose::Inspect)
    }

    /// Opens a `torch.save` file for its optimizer state ([`Self::pytorch_optimizer`]): a
    /// checkpoint dict holding `optimizer_state_dict` (and usually the model's weights, in
    /// [`Self::entries`]), or a bare `torch.save(optimizer.state_dict())`, whose
    /// [`Self::entries`] are then empty. Refuses a file without optimizer state, naming it.
    pub fn open_pytorch_optimizer(path: &Path) -> Result<(Self, PytorchOptimizer), Error> {
        let file = Self::open_as(path, Purpose::Optimizer)?;
        match file.pytorch_optimizer()? {
            Some(opt) => Ok((file, opt)),
            None => Err(Error::Malformed {
                path: path.to_path_buf(),
                reason: "holds no PyTorch optimizer state (no `optimizer_state_dict`, or a dict of `state` and \
                         `param_groups`)"
                    .into(),
            }),
        }
    }

    fn open_as(path: &Path, purpose: Purpose) -> Result<Self, Error> {
        let io = |source| Error::Io { path: path.to_path_buf(), source };
        let malformed = |reason: String| Error::Malformed { path: path.to_path_buf(), reason };
        if path.as_os_str().is_empty() {
            return Err(malformed("the path is empty".into()));
        }
        // Checked before opening: opening a FIFO for reading blocks until a writer comes.
        let stat = std::fs::metadata(path).map_err(io)?;
        if !stat.is_file() {
            return Err(malformed("not a regular file".into()));
        }
        let file = File::open(path).map_err(io)?;
        let mut head = [0u8; SNIFF_BYTES];
        let n = std::os::unix::fs::FileExt::read_at(&file, &mut head, 0).map_err(io)?;
        let named = FileKind::named(path);
        // The kinds the content can be; when it matches none, the name's, whose reader then
        // says what is wrong.
        let mut candidates = FileKind::sniff(&head[..n], stat.len());
        if candidates.is_empty() {
            candidates.extend(named);
        }
        if candidates.is_empty() {
            return Err(malformed(format!(
                "unknown checkpoint format: the content is none of safetensors, the compressed format, a zip or a \
                 pickle, and the name ends in none of {PLAIN_SUFFIX}, {COMPRESSED_SUFFIX}, .pt, .pth or .bin"
            )));
        }
        // Believe the first kind that parses; when none does, report why the one the name
        // claims did not (else the most conclusive one), and why the others did not.
        let mut failed: Vec<(FileKind, String)> = Vec::new();
        let mut parsed = None;
        for kind in candidates {
            match open_kind(path, file.try_clone().map_err(io)?, stat.len(), kind, purpose) {
                Ok(opened) => {
                    parsed = Some((kind, opened));
                    break;
                }
                Err(reason) => failed.push((kind, reason)),
            }
        }
        let Some((kind, (opened, extra))) = parsed else {
            let (_, mut reason) = failed.remove(failed.iter().position(|(k, _)| Some(*k) == named).unwrap_or(0));
            for (other, why) in failed {
                reason.push_str(&format!("; nor does it read as {}: {why}", other.describe()));
            }
            return Err(malformed(reason));
        };
        if let Some(claimed) = named.filter(|&n| n != kind) {
            tracing::warn!(
                path = %path.display(),
                "the name says {} but the content is {}: read as the content says",
                claimed.describe(),
                kind.describe()
            );
        }
        let (body, entries, metadata, checksums) = opened;
        let (others, pickle) = extra.map_or((Vec::new(), None), |x| (x.others, Some(x.pickle)));
        if entries.is_empty() {
            let optimizer = pickle.as_ref().is_some_and(|p| p.optimizer.is_some());
            if !(optimizer && purpose != Purpose::Load) {
                // Nothing in it could be loaded or checked; a pickle of something else reads so.
                return Err(malformed(if optimizer {
                    "holds a PyTorch optimizer state dict but no model weights".into()
                } else {
                    "holds no tensors".into()
                }));
            }
        }
        let ours = crate::format::claims_ours(&metadata);
        let (meta, checksums) = if ours {
            let meta = Meta::from_map(&metadata).map_err(|e| match e {
                MetaError::Corrupt => Error::MetadataCorrupt { path: path.to_path_buf() },
                MetaError::Invalid(reason) => malformed(reason),
            })?;
            let checksums = match (kind, checksums) {
                (FileKind::Safetensors, None) => return Err(malformed(format!("metadata lacks `{CHECKSUMS_KEY}`"))),
                (FileKind::Safetensors, Some(sums)) => {
                    if let Some(e) = entries.iter().find(|e| !sums.contains_key(&e.name)) {
                        return Err(malformed(format!("no checksum for tensor `{}`", e.name)));
                    }
                    Some(sums)
                }
                _ => None,
            };
            if !metadata.contains_key(METADATA_CHECKSUM_KEY) && purpose == Purpose::Load && first_time(path) {
                // Read all the same (runs from before version 2 resume), but never as checked;
                // said once per file (a run lists its checkpoints at every save).
                tracing::warn!(
                    path = %path.display(),
                    "a version-1 checkpoint: its metadata (epoch, step, losses) is covered by no checksum, so \
                     an alteration cannot be detected; it is used as written"
                );
            }
            (Some(meta), checksums)
        } else {
            (None, None)
        };
        let by_name = entries.iter().enumerate().map(|(i, e)| (e.name.clone(), i)).collect();
        let others_by_name = others.iter().enumerate().map(|(i, e)| (e.name.clone(), i)).collect();
        Ok(Self {
            path: path.to_path_buf(),
            kind,
            body,
            entries,
            by_name,
            metadata,
            meta,
            checksums,
            others,
            others_by_name,
            pickle,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's kind.
    pub fn kind(&self) -> FileKind {
        self.kind
    }

    /// `train`'s metadata; `None` for a file `train` did not write.
    pub fn meta(&self) -> Option<&Meta> {
        self.meta.as_ref()
    }

    /// `train`'s metadata, or for a foreign file what it records (epoch, losses) with
    /// markers for the rest: no optimiser state, an RNG scheme no run uses.
    pub fn meta_or_imported(&self) -> Meta {
        self.meta.clone().unwrap_or_else(|| crate::tools::imported_meta(&self.metadata))
    }

    /// The raw metadata map: for a foreign file whatever it records (a pickle's `epoch`,
    /// `train_loss`, ... when they are numbers).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Every tensor's name, dtype, shape and size, in file order (by name for PyTorch).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Every tensor's name, in file order.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }

    /// The entry of tensor `name`.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// The tensors a `torch.save` file holds beside the model's weights (its optimizer
    /// state, a 0-d `loss`, ...), by their dotted path in the pickle
    /// (`optimizer_state_dict.state.0.exp_avg`), sorted by name. Never among
    /// [`Self::entries`], never loaded as weights; [`Self::read_into`] reads them. Empty for
    /// every other kind of file.
    pub fn other_entries(&self) -> &[Entry] {
        &self.others
    }

    /// The entry of a tensor beside the model's weights (see [`Self::other_entries`]).
    pub fn other_entry(&self, name: &str) -> Option<&Entry> {
        self.others_by_name.get(name).map(|&i| &self.others[i])
    }

    /// Whether the file's tensors carry checksums (ours do; foreign files do not).
    pub fn is_checksummed(&self) -> bool {
        self.meta.is_some()
    }

    /// Whether `train`'s metadata was checked against its own checksum when the file was
    /// opened (required from format version 2 on). False for a version-1 file and a foreign one.
    pub fn is_metadata_covered(&self) -> bool {
        self.meta.is_some() && self.metadata.contains_key(METADATA_CHECKSUM_KEY)
    }

    /// Reads tensor `name` (one of [`Self::entries`] or [`Self::other_entries`]) into `out`
    /// (exactly its size) and checks it where the file has checksums.
    pub fn read_into(&self, name: &str, out: &mut [u8]) -> Result<(), Error> {
        let malformed = |reason: String| Error::Malformed { path: self.path.clone(), reason };
        let e = self.entry_sized(name, out.len())?;
        match &self.body {
            Body::Plain { file, data_start } => {
                std::os::unix::fs::FileExt::read_exact_at(file, out, data_start + e.begin)
                    .map_err(|source| Error::Io { path: self.path.clone(), source })?;
                if let Some(sums) = &self.checksums {
                    if checksum_hex(out) != sums[name] {
                        return Err(Error::Corrupt { path: self.path.clone(), tensor: name.to_string() });
                    }
                }
                Ok(())
            }
            Body::Compressed(reader) => reader
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .read_tensor_into(name, out)
                .map_err(|err| codec_error(&self.path, name, err)),
            Body::Pytorch(tensors) => {
                let bytes = tensors[name].read().map_err(|err| malformed(format!("tensor `{name}`: {err}")))?;
                if bytes.len() != out.len() {
                    return Err(malformed(format!("tensor `{name}` holds {} bytes, not {}", bytes.len(), out.len())));
                }
                out.copy_from_slice(&bytes);
                Ok(())
            }
        }
    }

    /// Reads several tensors into their buffers (each exactly its tensor's size), checked as
    /// [`Self::read_into`] does. A compressed file decodes them all in parallel, across
    /// tensors as well as within them; other kinds read them one after another.
    pub fn read_many_into(&self, targets: &mut [(&str, &mut [u8])]) -> Result<(), Error> {
        let Body::Compressed(reader) = &self.body else {
            for (name, out) in targets.iter_mut() {
                self.read_into(name, out)?;
            }
            return Ok(());
        };
        for (name, out) in targets.iter() {
            self.entry_sized(name, out.len())?;
        }
        let mut reader = reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        reader.read_tensors_into(targets).map_err(|err| {
            // The error names the damaged tensor among the many read.
            let tensor = match &err {
                train_ckpt::Error::ChecksumMismatch { name, .. } | train_ckpt::Error::Corrupt { name, .. } => {
                    name.clone()
                }
                _ => targets.first().map(|(n, _)| n.to_string()).unwrap_or_default(),
            };
            codec_error(&self.path, &tensor, err)
        })
    }

    /// The entry of tensor `name`, which a buffer of `len` bytes must exactly hold.
    fn entry_sized(&self, name: &str, len: usize) -> Result<&Entry, Error> {
        let malformed = |reason: String| Error::Malformed { path: self.path.clone(), reason };
        let e = self
            .entry(name)
            .or_else(|| self.other_entry(name))
            .ok_or_else(|| malformed(format!("no tensor `{name}`")))?;
        if len as u64 != e.bytes {
            return Err(malformed(format!("tensor `{name}` is {} bytes, not {len}", e.bytes)));
        }
        Ok(e)
    }

    /// Reads tensor `name` into a new buffer, checked as [`Self::read_into`] does.
    pub fn read(&self, name: &str) -> Result<Vec<u8>, Error> {
        let bytes = self.entry(name).or_else(|| self.other_entry(name)).map_or(0, |e| e.bytes) as usize;
        let mut out = vec![0u8; bytes];
        self.read_into(name, &mut out)?;
        Ok(out)
    }

    /// Reads every tensor (a `torch.save` file's [`Self::other_entries`] too), checking each
    /// where the file has checksums. Plain files are read
    /// one tensor at a time; compressed ones in groups of up to [`VERIFY_GROUP_BYTES`],
    /// decoded in parallel across tensors as well as within them.
    pub fn verify(&self) -> Result<Verification, Error> {
        match &self.body {
            Body::Compressed(_) => {
                for group in groups(&self.entries, VERIFY_GROUP_BYTES) {
                    let mut bufs: Vec<Vec<u8>> = group.iter().map(|e| vec![0u8; e.bytes as usize]).collect();
                    let mut targets: Vec<(&str, &mut [u8])> =
                        group.iter().zip(bufs.iter_mut()).map(|(e, b)| (e.name.as_str(), b.as_mut_slice())).collect();
                    self.read_many_into(&mut targets)?;
                }
            }
            _ => {
                let all = || self.entries.iter().chain(&self.others);
                let largest = all().map(|e| e.bytes).max().unwrap_or(0) as usize;
                let mut buf = vec![0u8; largest];
                for e in all() {
                    self.read_into(&e.name, &mut buf[..e.bytes as usize])?;
                }
            }
        }
        let integrity = match (self.is_checksummed(), self.is_metadata_covered()) {
            (true, true) => Integrity::Checked,
            (true, false) => Integrity::MetadataNotCovered,
            (false, _) => Integrity::NotChecked,
        };
        Ok(Verification { tensors: self.entries.len() + self.others.len(), integrity })
    }
}

/// Whether this process sees `path` here for the first time.
fn first_time(path: &Path) -> bool {
    static SEEN: std::sync::Mutex<std::collections::BTreeSet<PathBuf>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    SEEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(path.to_path_buf())
}

/// Opens `file` (at `path`, `len` bytes) as `kind`; what went wrong, when it is not one.
fn open_kind(
    path: &Path,
    file: File,
    len: u64,
    kind: FileKind,
    purpose: Purpose,
) -> Result<(open::Opened, Option<open::PytorchExtra>), String> {
    Ok(match kind {
        FileKind::Safetensors => (open_plain(file, len)?, None),
        FileKind::Compressed => (open_compressed(file)?, None),
        FileKind::Pytorch => {
            let (opened, extra) = open_pytorch(path, purpose == Purpose::Load)?;
            (opened, Some(extra))
        }
    })
}

/// Consecutive runs of `entries` of at most `limit` bytes each (a larger tensor alone).
fn groups(entries: &[Entry], limit: u64) -> Vec<&[Entry]> {
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

/// A compressed-format read error as ours: damaged data is [`Error::Corrupt`]
/// (naming the tensor), anything else malformed.
fn codec_error(path: &Path, tensor: &str, err: train_ckpt::Error) -> Error {
    match err {
        train_ckpt::Error::ChecksumMismatch { .. } | train_ckpt::Error::Corrupt { .. } => {
            Error::Corrupt { path: path.to_path_buf(), tensor: tensor.to_string() }
        }
        other => Error::Malformed { path: path.to_path_buf(), reason: other.to_string() },
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
            (&train_ckpt::MAGIC, 100, &[Compressed]),
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

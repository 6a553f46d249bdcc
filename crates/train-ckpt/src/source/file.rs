//! [`CheckpointFile`]: an opened checkpoint of any kind. Opening tries the kinds the
//! content can be ([`super::kind`]), checks our metadata and checksums, and keeps where the
//! tensor bytes are ([`super::body`]); tensors are read on demand.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::body::{read_compressed, read_compressed_range, read_plain_range, verify_compressed, verify_plain, Body};
use super::entry::Entry;
use super::kind::{FileKind, SNIFF_BYTES};
use super::open::{open_kind, KindError};
use super::optimizer::{parse_state_dict, PytorchOptimizer, ReadTensor};
use super::pickle::Pickle;
use super::summary::OptimizerSummary;
use super::verify::{Integrity, Verification};
use crate::error::Error;
use crate::meta::{claims_ours, Meta, MetaError, CHECKSUMS_KEY, METADATA_CHECKSUM_KEY};
use crate::names::{COMPRESSED_SUFFIX, PLAIN_SUFFIX};
use crate::sharded::{Index, IndexPiece, MAX_INDEX_BYTES};

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
    /// A sharded checkpoint's shard, loaded as [`Purpose::Load`] is; it must be a file of
    /// tensors, never another index (an index naming itself would recurse without end).
    Shard,
}

impl Purpose {
    /// Whether tensors are opened to be loaded.
    fn loads(self) -> bool {
        matches!(self, Self::Load | Self::Shard)
    }
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
    pickle: Option<Pickle>,
    /// A sharded checkpoint's shards (its body is then [`Body::Index`]).
    shards: Option<Box<Shards>>,
}

/// The shards of a sharded checkpoint, opened and checked against its index, and where
/// each tensor's pieces are.
struct Shards {
    files: Vec<CheckpointFile>,
    pieces: HashMap<String, Vec<IndexPiece>>,
    /// Bytes an element of each tensor takes.
    element_bytes: HashMap<String, u64>,
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
        if candidates.first() == Some(&FileKind::Sharded) {
            if purpose == Purpose::Shard {
                return Err(malformed("a shard must hold tensors, not be another sharded checkpoint's index".into()));
            }
            return Self::open_sharded(path, &file, stat.len());
        }
        // Believe the first kind that parses.
        let mut failed: Vec<(FileKind, KindError)> = Vec::new();
        let mut parsed = None;
        for kind in candidates {
            match open_kind(path, file.try_clone().map_err(io)?, stat.len(), kind, purpose.loads()) {
                Ok(opened) => {
                    parsed = Some((kind, opened));
                    break;
                }
                Err(reason) => failed.push((kind, reason)),
            }
        }
        let Some((kind, (opened, extra))) = parsed else {
            return Err(malformed(refusal(failed, named)));
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
            if !optimizer || purpose.loads() {
                // Nothing in it could be loaded or checked; a pickle of something else reads so.
                return Err(malformed(if optimizer {
                    "holds a PyTorch optimizer state dict but no model weights".into()
                } else {
                    "holds no tensors".into()
                }));
            }
        }
        let (meta, checksums) = if claims_ours(&metadata) {
            let meta = Meta::from_map(&metadata).map_err(|e| match e {
                MetaError::Corrupt => Error::MetadataCorrupt { path: path.to_path_buf() },
                MetaError::Invalid(reason) => malformed(reason),
            })?;
            let checksums = checksums_of_ours(path, kind, checksums, &entries)?;
            if !metadata.contains_key(METADATA_CHECKSUM_KEY) && purpose.loads() && first_time(path) {
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
            shards: None,
        })
    }

    /// Opens a sharded checkpoint's index (`file`, `len` bytes, at `path`): the index
    /// parsed and checked ([`Index::parse`]), then every shard it names opened, its size and
    /// its metadata's seal compared with the index's record, and every piece found in its
    /// shard with the dtype and size the index gives. Tensor data is not read.
    fn open_sharded(path: &Path, file: &File, len: u64) -> Result<Self, Error> {
        let malformed = |reason: String| Error::Malformed { path: path.to_path_buf(), reason };
        if len > MAX_INDEX_BYTES {
            return Err(malformed(format!("an index of {len} bytes (at most {MAX_INDEX_BYTES} are read)")));
        }
        let mut bytes = vec![0u8; len as usize];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut bytes, 0)
            .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let index = Index::parse(&bytes).map_err(malformed)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut files = Vec::with_capacity(index.shards.len());
        for record in &index.shards {
            let shard_path = dir.join(&record.file);
            let shard = Self::open_as(&shard_path, Purpose::Shard).map_err(|e| match e {
                Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    malformed(format!("its shard {} is missing", record.file))
                }
                other => other,
            })?;
            let size =
                std::fs::metadata(&shard_path).map_err(|source| Error::Io { path: shard_path.clone(), source })?;
            let seal = shard.metadata.get(METADATA_CHECKSUM_KEY);
            if size.len() != record.bytes || seal != Some(&record.seal) {
                return Err(malformed(format!(
                    "its shard {} is not the file the index records (another save's, or altered)",
                    record.file
                )));
            }
            files.push(shard);
        }
        let mut entries = Vec::with_capacity(index.tensors.len());
        let mut pieces = HashMap::with_capacity(index.tensors.len());
        let mut element_bytes = HashMap::with_capacity(index.tensors.len());
        for t in &index.tensors {
            let e = Entry::described(&t.name, t.dtype, &t.shape);
            let size = (t.dtype.bitsize() / 8).max(1) as u64;
            for p in &t.pieces {
                let found = files[p.shard].entry(&t.name);
                if !found.is_some_and(|f| f.dtype == t.dtype && f.bytes == p.len * size) {
                    return Err(malformed(format!(
                        "shard {} does not hold the piece of `{}` the index records",
                        index.shards[p.shard].file, t.name
                    )));
                }
            }
            pieces.insert(t.name.clone(), t.pieces.clone());
            element_bytes.insert(t.name.clone(), size);
            entries.push(e);
        }
        let metadata: HashMap<String, String> = index.metadata.into_iter().collect();
        let meta = Meta::from_map(&metadata).map_err(|e| match e {
            MetaError::Corrupt => Error::MetadataCorrupt { path: path.to_path_buf() },
            MetaError::Invalid(reason) => malformed(reason),
        })?;
        let by_name = entries.iter().enumerate().map(|(i, e)| (e.name.clone(), i)).collect();
        Ok(Self {
            path: path.to_path_buf(),
            kind: FileKind::Sharded,
            body: Body::Index,
            entries,
            by_name,
            metadata,
            meta: Some(meta),
            checksums: None,
            others: Vec::new(),
            others_by_name: HashMap::new(),
            pickle: None,
            shards: Some(Box::new(Shards { files, pieces, element_bytes })),
        })
    }

    /// The shard files of a sharded checkpoint (empty for any other kind).
    pub fn shard_paths(&self) -> Vec<&Path> {
        self.shards.as_ref().map_or_else(Vec::new, |s| s.files.iter().map(|f| f.path()).collect())
    }

    /// Reads bytes `offset .. offset + out.len()` of tensor `name` into `out`, checked as
    /// [`Self::read_into`] checks the whole: a plain file's tensor is hashed whole as it is
    /// read (a piece at a time), a compressed one's chunks are decoded a few at a time, a
    /// sharded checkpoint reads only the pieces the range overlaps. No buffer of the whole
    /// tensor is held.
    pub fn read_range_into(&self, name: &str, offset: u64, out: &mut [u8]) -> Result<(), Error> {
        let malformed = |reason: String| Error::Malformed { path: self.path.clone(), reason };
        let e = self
            .entry(name)
            .or_else(|| self.other_entry(name))
            .ok_or_else(|| malformed(format!("no tensor `{name}`")))?;
        if offset.checked_add(out.len() as u64).is_none_or(|end| end > e.bytes) {
            return Err(malformed(format!("bytes {offset}..+{} of tensor `{name}`, of {} bytes", out.len(), e.bytes)));
        }
        if let Some(sh) = &self.shards {
            let size = sh.element_bytes[name];
            let end = offset + out.len() as u64;
            for p in &sh.pieces[name] {
                let (ps, pe) = (p.offset * size, (p.offset + p.len) * size);
                let (lo, hi) = (ps.max(offset), pe.min(end));
                if lo < hi {
                    let dest = &mut out[(lo - offset) as usize..(hi - offset) as usize];
                    let shard = &sh.files[p.shard];
                    if lo == ps && hi == pe {
                        shard.read_into(name, dest)?;
                    } else {
                        shard.read_range_into(name, lo - ps, dest)?;
                    }
                }
            }
            return Ok(());
        }
        match &self.body {
            Body::Plain { file, data_start } => {
                read_plain_range(file, *data_start, &self.path, e, self.checksums.as_ref(), offset, out)
            }
            Body::Compressed(reader) => read_compressed_range(reader, &self.path, name, offset, out),
            Body::Pytorch(_) | Body::Index => {
                let whole = self.read(name)?;
                out.copy_from_slice(&whole[offset as usize..offset as usize + out.len()]);
                Ok(())
            }
        }
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
        self.meta.clone().unwrap_or_else(|| Meta::imported(&self.metadata))
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
        let e = self.entry_sized(name, out.len())?;
        if self.shards.is_some() {
            return self.read_range_into(name, 0, out);
        }
        self.body.read_into(&self.path, e, self.checksums.as_ref(), out)
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
        read_compressed(reader, &self.path, targets)
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
    /// where the file has checksums. Plain files are read and hashed a piece at a time,
    /// compressed ones decoded a few chunks at a time (in parallel), so verifying holds no
    /// buffer of a whole tensor; a `torch.save` file's tensors are read one at a time.
    pub fn verify(&self) -> Result<Verification, Error> {
        let all: Vec<&Entry> = self.entries.iter().chain(&self.others).collect();
        self.verify_entries(&all)
    }

    /// Reads and checks only the tensors `names` (as [`Self::verify`] does every tensor), so
    /// that a caller about to load them can refuse a damaged file before it touches anything,
    /// without reading the tensors it will not load. An unknown name is an error.
    pub fn verify_tensors(&self, names: &[&str]) -> Result<Verification, Error> {
        let chosen = names
            .iter()
            .map(|name| {
                self.entry(name)
                    .or_else(|| self.other_entry(name))
                    .ok_or_else(|| Error::Malformed { path: self.path.clone(), reason: format!("no tensor `{name}`") })
            })
            .collect::<Result<Vec<&Entry>, Error>>()?;
        self.verify_entries(&chosen)
    }

    /// Reads and checks `entries` (see [`Self::verify`] for what it holds at once).
    fn verify_entries(&self, entries: &[&Entry]) -> Result<Verification, Error> {
        if let Some(sh) = &self.shards {
            // Each shard checks the pieces it holds (its seal, which the index records, covers
            // their checksums).
            let mut integrity = Integrity::of(true, true);
            for (k, shard) in sh.files.iter().enumerate() {
                let names: Vec<&str> = entries
                    .iter()
                    .filter(|e| sh.pieces[&e.name].iter().any(|p| p.shard == k))
                    .map(|e| e.name.as_str())
                    .collect();
                if !names.is_empty() {
                    let v = shard.verify_tensors(&names)?;
                    if v.integrity != integrity {
                        integrity = v.integrity;
                    }
                }
            }
            return Ok(Verification { tensors: entries.len(), integrity });
        }
        match &self.body {
            Body::Compressed(reader) => {
                let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
                verify_compressed(reader, &self.path, &names)?;
            }
            Body::Plain { file, data_start } => {
                for e in entries {
                    verify_plain(file, *data_start, &self.path, e, self.checksums.as_ref())?;
                }
            }
            Body::Index => unreachable!("a sharded checkpoint is verified through its shards"),
            Body::Pytorch(_) => {
                let largest = entries.iter().map(|e| e.bytes).max().unwrap_or(0) as usize;
                let mut buf = vec![0u8; largest];
                for e in entries {
                    self.read_into(&e.name, &mut buf[..e.bytes as usize])?;
                }
            }
        }
        let integrity = Integrity::of(self.is_checksummed(), self.is_metadata_covered());
        Ok(Verification { tensors: entries.len(), integrity })
    }
}

impl CheckpointFile {
    /// The optimizer state a `torch.save` file holds: under `optimizer_state_dict` (or
    /// `optimizer`, `optim`, `optimizer_state`) beside the model's weights, or the whole
    /// file for a bare `torch.save(optimizer.state_dict())` (open that with
    /// [`Self::open_pytorch_optimizer`]). `Ok(None)` for a file without one, and for every
    /// file that is not a `torch.save` file (ours keep theirs as `optimizer/...` tensors).
    ///
    /// The contract, for a caller that resumes training from a PyTorch checkpoint:
    /// - [`PytorchOptimizer::param_groups`]: each group's parameter indices and
    ///   hyper-parameters (`lr`, `betas`, `eps`, `weight_decay`, `momentum`, the rest in
    ///   `other`).
    /// - [`PytorchOptimizer::state`]: per parameter index, its `step` (an int, float or
    ///   0-d tensor in the file, read as a number) and its state tensors by slot
    ///   (`exp_avg`, `exp_avg_sq`, `momentum_buffer`, ...), each an [`Entry`] whose bytes
    ///   [`Self::read_into`] reads (little-endian, row-major, the entry's dtype and shape).
    /// - Indices are PyTorch's: parameters numbered over the param groups in order, which
    ///   for one group of `model.parameters()` is `named_parameters()` order.
    ///   [`PytorchOptimizer::assign`] matches them to a model's parameters and says when it
    ///   cannot.
    ///
    /// Reads the one-element tensors that hold `step` or a hyper-parameter; no other tensor
    /// data. Errors ([`Error::Malformed`]) name the file and the part of the state dict
    /// that is not what PyTorch writes.
    pub fn pytorch_optimizer(&self) -> Result<Option<PytorchOptimizer>, Error> {
        Ok(self.parse_optimizer(true)?.map(|(opt, _)| opt))
    }

    /// What `ckpt inspect` reports of the optimizer state, without reading tensor
    /// data: ours from the `optimizer/<param>/<slot>` tensors and the metadata, a PyTorch
    /// file's from its state dict. `None` when the file holds no optimizer state.
    pub fn optimizer_summary(&self) -> Result<Option<OptimizerSummary>, Error> {
        Ok(match self.parse_optimizer(false)? {
            Some((opt, steps)) => Some(OptimizerSummary::of_pytorch(&opt, steps)),
            None => OptimizerSummary::of_ours(&self.entries, self.meta()),
        })
    }

    /// The optimizer state dict of a `torch.save` file, and how many parameters have a
    /// `step`: the pickle read by [`parse_state_dict`], which asks for one-element tensors
    /// (a `step` or hyper-parameter) to be read only when `read_scalars`; without, they read
    /// as `None` and no tensor is read.
    fn parse_optimizer(&self, read_scalars: bool) -> Result<Option<(PytorchOptimizer, usize)>, Error> {
        let Some(pickle) = &self.pickle else { return Ok(None) };
        let Some(at) = &pickle.optimizer else { return Ok(None) };
        let Some(dict) = at.dict(&pickle.root) else { return Ok(None) };
        let mut read = |e: &Entry| self.read(&e.name);
        let read: Option<ReadTensor<'_>> = read_scalars.then_some(&mut read);
        parse_state_dict(&self.path, at, dict, |p| self.other_entry(p), read).map(Some)
    }
}

/// Whether this process sees `path` here for the first time.
fn first_time(path: &Path) -> bool {
    static SEEN: std::sync::Mutex<std::collections::BTreeSet<PathBuf>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    SEEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(path.to_path_buf())
}

/// Why a file that reads as none of the kinds it was tried as is refused: why the kind its
/// name claims did not read (else the most conclusive kind), then why each other did not.
fn refusal(mut failed: Vec<(FileKind, KindError)>, named: Option<FileKind>) -> String {
    let (_, first) = failed.remove(failed.iter().position(|(k, _)| Some(*k) == named).unwrap_or(0));
    let mut reason = first.to_string();
    for (other, why) in failed {
        reason.push_str(&format!("; nor does it read as {}: {why}", other.describe()));
    }
    reason
}

/// The per-tensor checksums of a file of ours of `kind`: a plain file must carry one for
/// each of its `entries`; the compressed format checks its own (`None`).
fn checksums_of_ours(
    path: &Path,
    kind: FileKind,
    checksums: Option<HashMap<String, String>>,
    entries: &[Entry],
) -> Result<Option<HashMap<String, String>>, Error> {
    let malformed = |reason: String| Error::Malformed { path: path.to_path_buf(), reason };
    match (kind, checksums) {
        (FileKind::Safetensors, None) => Err(malformed(format!("metadata lacks `{CHECKSUMS_KEY}`"))),
        (FileKind::Safetensors, Some(sums)) => match entries.iter().find(|e| !sums.contains_key(&e.name)) {
            Some(e) => Err(malformed(format!("no checksum for tensor `{}`", e.name))),
            None => Ok(Some(sums)),
        },
        _ => Ok(None),
    }
}

//! The checkpoint file: a safetensors file, or (compressed) a `train-ckpt` file of the same
//! tensors and metadata (`crates/train-ckpt`, specified in `docs/compressed-format.md`).
//!
//! See `docs/checkpoint-format.md` for the specification. In short: model weights are stored
//! under their PyTorch names; optimiser state under `optimizer/<param>/<slot>` (a `/` never
//! occurs in PyTorch parameter names, so the two cannot collide); the safetensors
//! `__metadata__` map holds the keys of [`Meta`], each a string.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, View};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::CheckpointError;

/// Value of the `format` metadata key: marks a file as ours.
pub const FORMAT_NAME: &str = "train.checkpoint";
/// Value of the `format_version` key. Bumped on any change a reader of the previous
/// version would misread; readers refuse versions newer than their own.
pub const FORMAT_VERSION: u32 = 1;
/// Prefix of optimiser-state tensor names.
pub const OPTIMIZER_PREFIX: &str = "optimizer/";
/// File-name suffix of plain checkpoints.
pub const PLAIN_SUFFIX: &str = ".safetensors";
/// File-name suffix of compressed checkpoints (the `train-ckpt` format).
pub const COMPRESSED_SUFFIX: &str = ".tckpt";
/// The safetensors crate's own cap on the JSON header; we refuse larger before reading it.
const MAX_HEADER_BYTES: u64 = 100_000_000;
/// Metadata key of the per-tensor checksums: a JSON object mapping each tensor name to the
/// xxh3-64 of its bytes, as 16 lowercase hex digits.
pub const CHECKSUMS_KEY: &str = "xxh3";

/// How the random draws of a run are reproduced. There is no generator state to save:
/// every draw is a function of the seed and a position (see `training`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RngState {
    /// `training.seed`.
    pub seed: u64,
    /// How the seed is used; a reader must refuse schemes it does not know.
    pub scheme: String,
}

/// The metadata of a checkpoint, stored as strings in the safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Epochs completed when it was written.
    pub epoch: u32,
    /// Optimiser steps taken when it was written.
    pub step: u64,
    /// Batches of epoch `epoch + 1` already trained (non-zero only for a checkpoint taken
    /// mid-epoch, e.g. on SIGTERM); resuming skips them.
    pub batches_into_epoch: u64,
    /// Sum of per-example losses over those batches, so the epoch's mean comes out the same.
    pub partial_loss_sum: f64,
    /// Mean training loss of the last epoch.
    pub train_loss: f64,
    /// Validation loss after the last epoch.
    pub val_loss: f64,
    /// Validation accuracy after the last epoch.
    pub val_accuracy: f64,
    /// Whether `optimizer/...` tensors are present.
    pub has_optimizer_state: bool,
    /// The optimiser's kind and settings (JSON).
    pub optimizer: serde_json::Value,
    /// The learning-rate schedule and its state (JSON).
    pub lr_scheduler: serde_json::Value,
    /// How random draws are reproduced.
    pub rng: RngState,
    /// SHA-256 of the resolved configuration (JSON), to tell runs apart.
    pub config_sha256: String,
    /// `train <version>` of the writer.
    pub tool_version: String,
}

impl Meta {
    pub(crate) fn to_map(&self) -> HashMap<String, String> {
        HashMap::from([
            ("format".into(), FORMAT_NAME.into()),
            ("format_version".into(), self.format_version.to_string()),
            ("epoch".into(), self.epoch.to_string()),
            ("step".into(), self.step.to_string()),
            ("batches_into_epoch".into(), self.batches_into_epoch.to_string()),
            ("partial_loss_sum".into(), self.partial_loss_sum.to_string()),
            ("train_loss".into(), self.train_loss.to_string()),
            ("val_loss".into(), self.val_loss.to_string()),
            ("val_accuracy".into(), self.val_accuracy.to_string()),
            ("has_optimizer_state".into(), self.has_optimizer_state.to_string()),
            ("optimizer".into(), self.optimizer.to_string()),
            ("lr_scheduler".into(), self.lr_scheduler.to_string()),
            ("rng".into(), serde_json::to_string(&self.rng).expect("plain struct")),
            ("config_sha256".into(), self.config_sha256.clone()),
            ("tool_version".into(), self.tool_version.clone()),
        ])
    }

    pub(crate) fn from_map(map: &HashMap<String, String>) -> Result<Self, String> {
        let get = |k: &str| map.get(k).map(String::as_str).ok_or_else(|| format!("metadata lacks `{k}`"));
        fn parse<T: std::str::FromStr>(k: &str, v: &str) -> Result<T, String> {
            v.parse().map_err(|_| format!("metadata `{k}` = `{v}` does not parse"))
        }
        if get("format")? != FORMAT_NAME {
            return Err(format!("metadata `format` is `{}`, not `{FORMAT_NAME}`", get("format")?));
        }
        let format_version: u32 = parse("format_version", get("format_version")?)?;
        if format_version > FORMAT_VERSION {
            return Err(format!(
                "format version {format_version} is newer than this train reads ({FORMAT_VERSION}); upgrade train"
            ));
        }
        Ok(Self {
            format_version,
            epoch: parse("epoch", get("epoch")?)?,
            step: parse("step", get("step")?)?,
            batches_into_epoch: parse("batches_into_epoch", get("batches_into_epoch")?)?,
            partial_loss_sum: parse("partial_loss_sum", get("partial_loss_sum")?)?,
            train_loss: parse("train_loss", get("train_loss")?)?,
            val_loss: parse("val_loss", get("val_loss")?)?,
            val_accuracy: parse("val_accuracy", get("val_accuracy")?)?,
            has_optimizer_state: parse("has_optimizer_state", get("has_optimizer_state")?)?,
            optimizer: serde_json::from_str(get("optimizer")?).map_err(|e| format!("metadata `optimizer`: {e}"))?,
            lr_scheduler: serde_json::from_str(get("lr_scheduler")?)
                .map_err(|e| format!("metadata `lr_scheduler`: {e}"))?,
            rng: serde_json::from_str(get("rng")?).map_err(|e| format!("metadata `rng`: {e}"))?,
            config_sha256: get("config_sha256")?.to_string(),
            tool_version: get("tool_version")?.to_string(),
        })
    }
}

/// A tensor on the host, contiguous, viewed as safetensors bytes without a copy.
pub(crate) struct HostTensor {
    tensor: Tensor,
    dtype: Dtype,
    shape: Vec<usize>,
    len: usize,
}

impl HostTensor {
    /// Copies `t` to the host if it is elsewhere; makes it contiguous.
    pub(crate) fn new(name: &str, t: &Tensor) -> Result<Self, String> {
        let tensor = t.to_device(Device::Cpu).contiguous();
        let dtype =
            dtype_of(tensor.kind()).ok_or_else(|| format!("tensor `{name}` has unsupported dtype {:?}", t.kind()))?;
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        let len = tensor_bytes(&tensor) as usize;
        Ok(Self { tensor, dtype, shape, len })
    }
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        if self.len == 0 {
            return Cow::Borrowed(&[]);
        }
        // SAFETY: the tensor is a contiguous host tensor of `len` bytes, owned by `self`
        // for as long as the borrow lives, and nothing writes to it meanwhile.
        Cow::Borrowed(unsafe { std::slice::from_raw_parts(self.tensor.data_ptr() as *const u8, self.len) })
    }
    fn data_len(&self) -> usize {
        self.len
    }
}

/// The safetensors dtype of a libtorch kind, for the kinds checkpoints hold.
pub(crate) fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        _ => return None,
    })
}

/// The libtorch kind of a safetensors dtype.
pub(crate) fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        _ => return None,
    })
}

/// Serializes a checkpoint of `tensors` (copied to the host first when elsewhere) with
/// `meta` and the per-tensor checksums. `path` only names the file in errors.
pub(crate) fn serialize(path: &Path, tensors: &[(String, Tensor)], meta: &Meta) -> Result<Vec<u8>, CheckpointError> {
    let host: Vec<(String, HostTensor)> = tensors
        .iter()
        .map(|(n, t)| HostTensor::new(n, t).map(|h| (n.clone(), h)))
        .collect::<Result<_, _>>()
        .map_err(|reason| CheckpointError::Malformed { path: path.to_path_buf(), reason })?;
    let views: Vec<(&str, &HostTensor)> = host.iter().map(|(n, h)| (n.as_str(), h)).collect();
    serialize_views(path, &views, meta)
}

/// Serializes any tensors that safetensors can view, with `meta` and per-tensor checksums.
pub(crate) fn serialize_views<V: View + Copy>(
    path: &Path,
    views: &[(&str, V)],
    meta: &Meta,
) -> Result<Vec<u8>, CheckpointError> {
    let checksums: serde_json::Map<String, serde_json::Value> =
        views.iter().map(|(n, v)| (n.to_string(), checksum_hex(&v.data()).into())).collect();
    let mut metadata = meta.to_map();
    metadata.insert(CHECKSUMS_KEY.into(), serde_json::Value::Object(checksums).to_string());
    safetensors::serialize(views.iter().map(|(n, v)| (*n, *v)), Some(metadata))
        .map_err(|e| CheckpointError::Malformed { path: path.to_path_buf(), reason: e.to_string() })
}

/// A tensor held as raw little-endian bytes.
#[derive(Debug, Clone)]
pub struct RawTensor {
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major bytes, `shape.product() * dtype.size()` of them.
    pub data: Vec<u8>,
}

impl View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes serialized (safetensors) checkpoint bytes to `out`; returns the file's size.
pub(crate) fn emit(out: &mut File, bytes: &[u8]) -> std::io::Result<u64> {
    let mut writer = BufWriter::new(&mut *out);
    writer.write_all(bytes)?;
    writer.flush()?;
    drop(writer);
    out.metadata().map(|m| m.len())
}

/// Writes `tensors` and `meta` to `out` in the compressed format (copied to the host first
/// when elsewhere); returns the file's size.
pub(crate) fn write_compressed(out: &mut File, tensors: &[(String, Tensor)], meta: &Meta) -> Result<u64, String> {
    let host: Vec<(String, HostTensor)> =
        tensors.iter().map(|(n, t)| HostTensor::new(n, t).map(|h| (n.clone(), h))).collect::<Result<_, _>>()?;
    let views: Vec<(&str, &HostTensor)> = host.iter().map(|(n, h)| (n.as_str(), h)).collect();
    write_compressed_views(out, &views, meta)
}

/// Writes any tensors that safetensors can view to `out` in the compressed format, one at a
/// time; returns the file's size.
pub(crate) fn write_compressed_views<V: View + Copy>(
    out: &mut File,
    views: &[(&str, V)],
    meta: &Meta,
) -> Result<u64, String> {
    let mut writer = train_ckpt::Writer::new(BufWriter::new(&mut *out)).map_err(|e| e.to_string())?;
    for (name, v) in views {
        writer.add_tensor(name, codec_dtype(v.dtype())?, v.shape(), &v.data()).map_err(|e| e.to_string())?;
    }
    let metadata = meta.to_map().into_iter().collect();
    writer.finish(metadata).map_err(|e| e.to_string())?.flush().map_err(|e| e.to_string())?;
    out.metadata().map(|m| m.len()).map_err(|e| e.to_string())
}

/// The compressed format's name for a dtype.
pub(crate) fn codec_dtype(d: Dtype) -> Result<train_ckpt::Dtype, String> {
    use train_ckpt::Dtype as C;
    Ok(match d {
        Dtype::BOOL => C::Bool,
        Dtype::U8 => C::U8,
        Dtype::I8 => C::I8,
        Dtype::I16 => C::I16,
        Dtype::I32 => C::I32,
        Dtype::I64 => C::I64,
        Dtype::F16 => C::F16,
        Dtype::BF16 => C::BF16,
        Dtype::F32 => C::F32,
        Dtype::F64 => C::F64,
        other => return Err(format!("dtype {other:?} has no compressed encoding")),
    })
}

/// The safetensors name of a compressed-format dtype.
pub(crate) fn safetensors_dtype(d: train_ckpt::Dtype) -> Dtype {
    use train_ckpt::Dtype as C;
    match d {
        C::Bool => Dtype::BOOL,
        C::U8 => Dtype::U8,
        C::I8 => Dtype::I8,
        C::I16 => Dtype::I16,
        C::I32 => Dtype::I32,
        C::I64 => Dtype::I64,
        C::F16 => Dtype::F16,
        C::BF16 => Dtype::BF16,
        C::F32 => Dtype::F32,
        C::F64 => Dtype::F64,
    }
}

/// Whether `path` names a compressed checkpoint.
pub fn is_compressed(path: &Path) -> bool {
    path.to_string_lossy().ends_with(COMPRESSED_SUFFIX)
}

/// Where an open checkpoint's tensor bytes are read from.
enum Body {
    /// A plain file, read with positioned reads (no mapping: only what is asked for is read,
    /// and nothing stays resident in this process afterwards).
    Plain(File),
    /// The compressed format, whose reader decodes (and checks) one tensor at a time.
    Compressed(Box<std::sync::Mutex<train_ckpt::Reader<BufReader<File>>>>),
}

/// One tensor's place in a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Offset of its bytes from the start of the file's data section.
    begin: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// An opened checkpoint whose header, metadata and checksums have been read and checked;
/// tensors are read one at a time, on demand, and checked against their checksums.
pub struct CheckpointFile {
    path: PathBuf,
    body: Body,
    /// Offset of the data section in the (decompressed) file.
    data_start: u64,
    entries: Vec<Entry>,
    meta: Meta,
    checksums: HashMap<String, String>,
}

impl CheckpointFile {
    /// Opens `path`: reads and validates the header (sizes checked against the file's length
    /// before anything is allocated), the metadata and the checksums. Tensor data is not read.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
        let malformed = |reason: String| CheckpointError::Malformed { path: path.to_path_buf(), reason };
        let file = File::open(path).map_err(io)?;
        if is_compressed(path) {
            let reader = train_ckpt::Reader::new(BufReader::new(file)).map_err(|e| malformed(e.to_string()))?;
            let entries = reader
                .tensors()
                .iter()
                .map(|t| Entry {
                    name: t.name.clone(),
                    dtype: safetensors_dtype(t.dtype),
                    shape: t.shape.clone(),
                    begin: 0,
                    bytes: t.raw_len,
                })
                .collect();
            let map: HashMap<String, String> = reader.metadata().clone().into_iter().collect();
            let meta = Meta::from_map(&map).map_err(malformed)?;
            let body = Body::Compressed(Box::new(std::sync::Mutex::new(reader)));
            // The format checks its own per-tensor checksums.
            return Ok(Self {
                path: path.to_path_buf(),
                body,
                data_start: 0,
                entries,
                meta,
                checksums: HashMap::new(),
            });
        }
        let total = file.metadata().map_err(io)?.len();
        let body = Body::Plain(file);
        let mut reader = HeaderReader { body: &body, pos: 0 };
        let (header, data_start) = read_header(&mut reader).map_err(malformed)?;
        let data_len = total.checked_sub(data_start).ok_or_else(|| malformed("shorter than its header".into()))?;
        let entries = entries_of(&header, data_len).map_err(malformed)?;
        let map = header.metadata.ok_or_else(|| malformed("no metadata: not written by train".into()))?;
        let meta = Meta::from_map(&map).map_err(malformed)?;
        let checksums: HashMap<String, String> = map
            .get(CHECKSUMS_KEY)
            .ok_or_else(|| malformed(format!("metadata lacks `{CHECKSUMS_KEY}`")))
            .and_then(|j| serde_json::from_str(j).map_err(|e| malformed(format!("metadata `{CHECKSUMS_KEY}`: {e}"))))?;
        if let Some(e) = entries.iter().find(|e| !checksums.contains_key(&e.name)) {
            return Err(malformed(format!("no checksum for tensor `{}`", e.name)));
        }
        Ok(Self { path: path.to_path_buf(), body, data_start, entries, meta, checksums })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Every tensor's name, dtype, shape and size, in file order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Every tensor's name, in file order.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }

    /// The entry of tensor `name`.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Reads tensor `name` into `out` (exactly its size) and checks its checksum.
    pub fn read_into(&self, name: &str, out: &mut [u8]) -> Result<(), CheckpointError> {
        let malformed = |reason: String| CheckpointError::Malformed { path: self.path.clone(), reason };
        let e = self.entry(name).ok_or_else(|| malformed(format!("no tensor `{name}`")))?;
        if out.len() as u64 != e.bytes {
            return Err(malformed(format!("tensor `{name}` is {} bytes, not {}", e.bytes, out.len())));
        }
        let at = self.data_start + e.begin;
        match &self.body {
            Body::Plain(file) => std::os::unix::fs::FileExt::read_exact_at(file, out, at)
                .map_err(|source| CheckpointError::Io { path: self.path.clone(), source })?,
            Body::Compressed(reader) => {
                let mut reader = reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                return reader.read_tensor_into(name, out).map_err(|err| codec_error(&self.path, name, err));
            }
        }
        if checksum_hex(out) != self.checksums[name] {
            return Err(CheckpointError::Corrupt { path: self.path.clone(), tensor: name.to_string() });
        }
        Ok(())
    }

    /// Reads tensor `name` into a new buffer, checked against its checksum.
    pub fn read(&self, name: &str) -> Result<Vec<u8>, CheckpointError> {
        let bytes = self.entry(name).map_or(0, |e| e.bytes) as usize;
        let mut out = vec![0u8; bytes];
        self.read_into(name, &mut out)?;
        Ok(out)
    }

    /// Checks every tensor against its checksum, one at a time; returns how many.
    pub fn verify(&self) -> Result<usize, CheckpointError> {
        let largest = self.entries.iter().map(|e| e.bytes).max().unwrap_or(0) as usize;
        let mut buf = vec![0u8; largest];
        for e in &self.entries {
            self.read_into(&e.name, &mut buf[..e.bytes as usize])?;
        }
        Ok(self.entries.len())
    }
}

/// Sequential reads of the header from either body.
struct HeaderReader<'a> {
    body: &'a Body,
    pos: u64,
}

impl Read for HeaderReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = match self.body {
            Body::Plain(f) => std::os::unix::fs::FileExt::read_at(f, out, self.pos)?,
            Body::Compressed(_) => 0,
        };
        self.pos += n as u64;
        Ok(n)
    }
}

/// The parsed JSON header of a safetensors file.
#[derive(Deserialize)]
struct Header {
    #[serde(rename = "__metadata__")]
    metadata: Option<HashMap<String, String>>,
    #[serde(flatten)]
    tensors: HashMap<String, HeaderTensor>,
}

#[derive(Deserialize)]
struct HeaderTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// Reads the 8-byte length and the JSON header; returns it and the data section's offset.
fn read_header(r: &mut impl Read) -> Result<(Header, u64), String> {
    let mut len = [0u8; 8];
    r.read_exact(&mut len).map_err(|e| format!("cannot read the header length: {e}"))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(format!("header length {len} exceeds the {MAX_HEADER_BYTES}-byte limit"));
    }
    let mut header = Vec::new();
    r.take(len).read_to_end(&mut header).map_err(|e| format!("cannot read the header: {e}"))?;
    if header.len() as u64 != len {
        return Err(format!("truncated header: {} of {len} bytes", header.len()));
    }
    let header: Header = serde_json::from_slice(&header).map_err(|e| format!("header: {e}"))?;
    Ok((header, 8 + len))
}

/// The entries of a header, checked: each tensor's byte range matches its dtype and shape
/// (checked arithmetic), the ranges tile the data section exactly, as safetensors requires.
fn entries_of(header: &Header, data_len: u64) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::with_capacity(header.tensors.len());
    for (name, t) in &header.tensors {
        let (begin, end) = t.data_offsets;
        let bits = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(t.dtype.bitsize()))
            .ok_or_else(|| format!("tensor `{name}`: shape {:?} overflows", t.shape))?;
        if bits % 8 != 0 || end < begin || end - begin != (bits / 8) as u64 {
            return Err(format!("tensor `{name}`: offsets {begin}..{end} do not fit {:?} {:?}", t.dtype, t.shape));
        }
        entries.push(Entry { name: name.clone(), dtype: t.dtype, shape: t.shape.clone(), begin, bytes: end - begin });
    }
    entries.sort_by_key(|e| e.begin);
    let mut at = 0;
    for e in &entries {
        if e.begin != at {
            return Err(format!("tensor `{}` starts at {}, expected {at}", e.name, e.begin));
        }
        at += e.bytes;
    }
    if at != data_len {
        return Err(format!("tensors cover {at} bytes of a {data_len}-byte data section"));
    }
    Ok(entries)
}

/// Reads only the metadata of a checkpoint (the header; for a compressed file its index).
/// Used to rank resume candidates cheaply.
pub fn read_meta(path: &Path) -> Result<Meta, CheckpointError> {
    let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
    let malformed = |reason: String| CheckpointError::Malformed { path: path.to_path_buf(), reason };
    let file = File::open(path).map_err(io)?;
    let map = if is_compressed(path) {
        // Opening reads the trailer and the index only.
        let reader = train_ckpt::Reader::new(BufReader::new(file)).map_err(|e| malformed(e.to_string()))?;
        reader.metadata().clone().into_iter().collect()
    } else {
        let (header, _) = read_header(&mut BufReader::new(file)).map_err(malformed)?;
        header.metadata.ok_or_else(|| malformed("no metadata: not written by train".into()))?
    };
    Meta::from_map(&map).map_err(malformed)
}

/// xxh3-64 of `data` as 16 lowercase hex digits.
pub(crate) fn checksum_hex(data: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(data))
}

/// A compressed-format read error as ours: damaged data is [`CheckpointError::Corrupt`]
/// (naming the tensor), anything else malformed.
pub(crate) fn codec_error(path: &Path, tensor: &str, err: train_ckpt::Error) -> CheckpointError {
    match err {
        train_ckpt::Error::ChecksumMismatch { .. } | train_ckpt::Error::Corrupt { .. } => {
            CheckpointError::Corrupt { path: path.to_path_buf(), tensor: tensor.to_string() }
        }
        other => CheckpointError::Malformed { path: path.to_path_buf(), reason: other.to_string() },
    }
}

/// Bytes a tensor's elements take (what a checkpoint stores for it).
pub fn tensor_bytes(t: &Tensor) -> u64 {
    (t.numel() * t.kind().elt_size_in_bytes()) as u64
}

//! The checkpoint file: a safetensors file, optionally zstd-compressed as a whole.
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

use safetensors::tensor::{Dtype, SafeTensors, View};
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
/// File-name suffix of compressed checkpoints (a zstd frame holding a safetensors file).
pub const COMPRESSED_SUFFIX: &str = ".safetensors.zst";
/// The safetensors crate's own cap on the JSON header; we refuse larger before reading it.
const MAX_HEADER_BYTES: u64 = 100_000_000;
/// zstd level: 3 is zstd's default and its usual speed/ratio balance.
const ZSTD_LEVEL: i32 = 3;
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
        let len = tensor.numel() * tensor.kind().elt_size_in_bytes();
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

/// Writes serialized checkpoint bytes to `out`, zstd-compressed when `compress`; returns
/// the file's size.
pub(crate) fn emit(out: &mut File, bytes: &[u8], compress: bool) -> std::io::Result<u64> {
    let mut writer = BufWriter::new(&mut *out);
    if compress {
        zstd::stream::copy_encode(bytes, &mut writer, ZSTD_LEVEL)?;
    } else {
        writer.write_all(bytes)?;
    }
    writer.flush()?;
    drop(writer);
    out.metadata().map(|m| m.len())
}

/// Whether `path` names a compressed checkpoint.
pub fn is_compressed(path: &Path) -> bool {
    path.to_string_lossy().ends_with(COMPRESSED_SUFFIX)
}

/// The bytes of a checkpoint: mapped from disk when plain, decompressed when not.
enum Backing {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

/// An opened, structurally checked checkpoint file.
pub struct CheckpointFile {
    path: PathBuf,
    bytes: Backing,
    meta: Meta,
    checksums: HashMap<String, String>,
}

impl CheckpointFile {
    /// Opens `path`, checks its structure and metadata, and keeps its bytes at hand
    /// (memory-mapped for a plain file, so tensors are read from disk only when used).
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        let bytes = if is_compressed(path) {
            let mut out = Vec::new();
            zstd::stream::Decoder::new(file)
                .and_then(|mut d| d.read_to_end(&mut out))
                .map_err(|e| CheckpointError::Malformed { path: path.to_path_buf(), reason: format!("zstd: {e}") })?;
            Backing::Owned(out)
        } else {
            // SAFETY: checkpoints are written under a temporary name and renamed into place,
            // never modified afterwards, so the mapped bytes do not change under us.
            Backing::Mapped(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
        };
        let slice: &[u8] = match &bytes {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        };
        let (_, header) = SafeTensors::read_metadata(slice)
            .map_err(|e| CheckpointError::Malformed { path: path.to_path_buf(), reason: e.to_string() })?;
        let malformed = |reason: String| CheckpointError::Malformed { path: path.to_path_buf(), reason };
        let map = header.metadata().as_ref().ok_or_else(|| malformed("no metadata: not written by train".into()))?;
        let meta = Meta::from_map(map).map_err(malformed)?;
        let checksums: HashMap<String, String> = map
            .get(CHECKSUMS_KEY)
            .ok_or_else(|| malformed(format!("metadata lacks `{CHECKSUMS_KEY}`")))
            .and_then(|j| serde_json::from_str(j).map_err(|e| malformed(format!("metadata `{CHECKSUMS_KEY}`: {e}"))))?;
        if let Some(name) = header.tensors().keys().find(|n| !checksums.contains_key(*n)) {
            return Err(malformed(format!("no checksum for tensor `{name}`")));
        }
        Ok(Self { path: path.to_path_buf(), bytes, meta, checksums })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The bytes of tensor `name`, after checking them against their checksum.
    pub fn verified_data(&self, name: &str) -> Result<&[u8], CheckpointError> {
        let malformed = |reason: String| CheckpointError::Malformed { path: self.path.clone(), reason };
        let view = self.tensors().tensor(name).map_err(|_| malformed(format!("no tensor `{name}`")))?;
        let data = view.data();
        let expected = self.checksums.get(name).ok_or_else(|| malformed(format!("no checksum for `{name}`")))?;
        if checksum_hex(data) != *expected {
            return Err(CheckpointError::Corrupt { path: self.path.clone(), tensor: name.to_string() });
        }
        Ok(data)
    }

    /// Checks every tensor against its checksum; returns how many were checked.
    pub fn verify(&self) -> Result<usize, CheckpointError> {
        let names: Vec<String> = self.tensors().names().into_iter().map(String::from).collect();
        for name in &names {
            self.verified_data(name)?;
        }
        Ok(names.len())
    }

    /// The tensors, as views into the file's bytes (unverified; see [`Self::verified_data`]).
    pub fn tensors(&self) -> SafeTensors<'_> {
        let slice: &[u8] = match &self.bytes {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        };
        SafeTensors::deserialize(slice).expect("checked in open")
    }
}

/// Reads only the metadata of a checkpoint: the 8-byte length and the JSON header, after
/// decompressing just that much when compressed. Used to rank resume candidates cheaply.
pub fn read_meta(path: &Path) -> Result<Meta, CheckpointError> {
    let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
    let malformed = |reason: String| CheckpointError::Malformed { path: path.to_path_buf(), reason };
    let file = File::open(path).map_err(io)?;
    let mut reader: Box<dyn Read> = if is_compressed(path) {
        Box::new(zstd::stream::Decoder::new(file).map_err(io)?)
    } else {
        Box::new(BufReader::new(file))
    };
    let mut len = [0u8; 8];
    reader.read_exact(&mut len).map_err(|e| malformed(format!("cannot read the header length: {e}")))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(malformed(format!("header length {len} exceeds the {MAX_HEADER_BYTES}-byte limit")));
    }
    let mut header = Vec::new();
    reader.take(len).read_to_end(&mut header).map_err(io)?;
    if header.len() as u64 != len {
        return Err(malformed(format!("truncated header: {} of {len} bytes", header.len())));
    }
    #[derive(Deserialize)]
    struct Header {
        #[serde(rename = "__metadata__")]
        metadata: Option<HashMap<String, String>>,
    }
    let header: Header = serde_json::from_slice(&header).map_err(|e| malformed(format!("header: {e}")))?;
    Meta::from_map(&header.metadata.ok_or_else(|| malformed("no metadata: not written by train".into()))?)
        .map_err(malformed)
}

/// xxh3-64 of `data` as 16 lowercase hex digits.
pub(crate) fn checksum_hex(data: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(data))
}

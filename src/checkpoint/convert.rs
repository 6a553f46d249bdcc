//! `train ckpt`: reading any supported checkpoint file tensor by tensor, and the
//! inspect / verify / convert / strip operations built on that.
//!
//! Formats, told apart by file name:
//! - `*.safetensors`: plain safetensors (ours carry metadata and checksums; any other
//!   safetensors file, e.g. from Hugging Face, is read too);
//! - `*.tckpt`: the compressed format (`docs/compressed-format.md`);
//! - `*.pt`, `*.pth`, `*.bin`: files written by `torch.save` (read only), either a state dict
//!   or a dict holding `model_state_dict` (or `state_dict` / `model`) with `epoch`,
//!   `train_loss`, `val_loss` beside it, as the seed guide's Python code saves them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde::Serialize;

use super::format::{
    self, checksum_hex, codec_error, safetensors_dtype, Meta, RawTensor, CHECKSUMS_KEY, COMPRESSED_SUFFIX, PLAIN_SUFFIX,
};
use super::{CheckpointError, RngState, FORMAT_VERSION, OPTIMIZER_PREFIX};
use crate::atomic;

/// Keys under which `torch.save`d dicts commonly nest a model's state dict, tried in order.
const PYTORCH_MODEL_KEYS: &[&str] = &["model_state_dict", "state_dict", "model"];

/// The file formats `train ckpt` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// Plain safetensors.
    Safetensors,
    /// The compressed format.
    Compressed,
    /// A `torch.save` pickle (zip or legacy).
    Pytorch,
}

impl FileKind {
    /// The kind of `path`, from its name.
    pub fn of(path: &Path) -> Result<Self, CheckpointError> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(COMPRESSED_SUFFIX) {
            Ok(Self::Compressed)
        } else if name.ends_with(PLAIN_SUFFIX) {
            Ok(Self::Safetensors)
        } else if [".pt", ".pth", ".bin"].iter().any(|e| name.ends_with(e)) {
            Ok(Self::Pytorch)
        } else {
            Err(CheckpointError::Malformed {
                path: path.to_path_buf(),
                reason: format!(
                    "unknown checkpoint format: expected a name ending in {PLAIN_SUFFIX}, {COMPRESSED_SUFFIX}, .pt, .pth or .bin"
                ),
            })
        }
    }
}

/// A checkpoint file of any kind, read into memory tensor by tensor on demand.
pub struct AnyCheckpoint {
    path: PathBuf,
    kind: FileKind,
    /// Tensor names in file order, with dtype and shape.
    entries: Vec<(String, Dtype, Vec<usize>)>,
    metadata: HashMap<String, String>,
    body: Body,
}

enum Body {
    Bytes(Bytes),
    Compressed(std::sync::Mutex<train_ckpt::Reader<std::io::BufReader<std::fs::File>>>),
    Pytorch(HashMap<String, pytorch_reader::Tensor>),
}

enum Bytes {
    Mapped(memmap2::Mmap),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
        }
    }
}

impl AnyCheckpoint {
    /// Opens `path`, parsing its header or pickle (tensor data is read only when asked for).
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let kind = FileKind::of(path)?;
        let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
        let malformed = |reason: String| CheckpointError::Malformed { path: path.to_path_buf(), reason };
        match kind {
            FileKind::Safetensors => {
                let file = std::fs::File::open(path).map_err(io)?;
                // SAFETY: read-only map of a file we do not modify while it is open.
                let bytes = Bytes::Mapped(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?);
                let (_, header) = SafeTensors::read_metadata(bytes.as_slice()).map_err(|e| malformed(e.to_string()))?;
                let metadata = header.metadata().clone().unwrap_or_default();
                let st = SafeTensors::deserialize(bytes.as_slice()).map_err(|e| malformed(e.to_string()))?;
                let mut entries: Vec<(String, Dtype, Vec<usize>, usize)> = st
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.dtype(), v.shape().to_vec(), v.data().as_ptr() as usize))
                    .collect();
                entries.sort_by_key(|e| e.3);
                let entries = entries.into_iter().map(|(n, d, s, _)| (n, d, s)).collect();
                Ok(Self { path: path.to_path_buf(), kind, entries, metadata, body: Body::Bytes(bytes) })
            }
            FileKind::Compressed => {
                let file = std::fs::File::open(path).map_err(io)?;
                let reader =
                    train_ckpt::Reader::new(std::io::BufReader::new(file)).map_err(|e| malformed(e.to_string()))?;
                let entries = reader
                    .tensors()
                    .iter()
                    .map(|t| (t.name.clone(), safetensors_dtype(t.dtype), t.shape.clone()))
                    .collect();
                let metadata = reader.metadata().clone().into_iter().collect();
                let body = Body::Compressed(std::sync::Mutex::new(reader));
                Ok(Self { path: path.to_path_buf(), kind, entries, metadata, body })
            }
            FileKind::Pytorch => open_pytorch(path),
        }
    }

    /// The file's kind.
    pub fn kind(&self) -> FileKind {
        self.kind
    }

    /// Names, dtypes and shapes of the tensors, in file order (sorted by name for PyTorch).
    pub fn entries(&self) -> &[(String, Dtype, Vec<usize>)] {
        &self.entries
    }

    /// Our metadata, when the file was written by `train` (or converted by it).
    pub fn meta(&self) -> Option<Meta> {
        Meta::from_map(&self.metadata).ok()
    }

    /// The tensor's bytes; checked against its checksum where the file has checksums
    /// (ours), or against the zip entry's CRC (PyTorch).
    pub fn read(&self, name: &str) -> Result<Vec<u8>, CheckpointError> {
        let malformed = |reason: String| CheckpointError::Malformed { path: self.path.clone(), reason };
        match &self.body {
            Body::Bytes(bytes) => {
                let st = SafeTensors::deserialize(bytes.as_slice()).map_err(|e| malformed(e.to_string()))?;
                let data = st.tensor(name).map_err(|_| malformed(format!("no tensor `{name}`")))?.data();
                if let Some(expected) = self.checksums()?.get(name) {
                    if checksum_hex(data) != *expected {
                        return Err(CheckpointError::Corrupt { path: self.path.clone(), tensor: name.into() });
                    }
                }
                Ok(data.to_vec())
            }
            Body::Compressed(reader) => reader
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .read_tensor(name)
                .map_err(|e| codec_error(&self.path, name, e)),
            Body::Pytorch(tensors) => tensors
                .get(name)
                .ok_or_else(|| malformed(format!("no tensor `{name}`")))?
                .read()
                .map_err(|e| malformed(e.to_string())),
        }
    }

    fn checksums(&self) -> Result<HashMap<String, String>, CheckpointError> {
        match self.metadata.get(CHECKSUMS_KEY) {
            None => Ok(HashMap::new()),
            Some(j) => serde_json::from_str(j).map_err(|e| CheckpointError::Malformed {
                path: self.path.clone(),
                reason: format!("metadata `{CHECKSUMS_KEY}`: {e}"),
            }),
        }
    }

    /// Reads every tensor, checking what the format lets us check; returns how many.
    pub fn verify(&self) -> Result<usize, CheckpointError> {
        if self.metadata.contains_key("format") {
            // Ours: the metadata must parse and every tensor must have a checksum (the
            // compressed format keeps its own, checked by every read).
            Meta::from_map(&self.metadata)
                .map_err(|reason| CheckpointError::Malformed { path: self.path.clone(), reason })?;
            let sums = self.checksums()?;
            let missing = self.entries.iter().find(|(n, _, _)| !sums.contains_key(n));
            if let (Some((name, _, _)), false) = (missing, self.kind == FileKind::Compressed) {
                return Err(CheckpointError::Malformed {
                    path: self.path.clone(),
                    reason: format!("no checksum for tensor `{name}`"),
                });
            }
        }
        for (name, _, _) in &self.entries {
            self.read(name)?;
        }
        Ok(self.entries.len())
    }
}

fn open_pytorch(path: &Path) -> Result<AnyCheckpoint, CheckpointError> {
    let malformed = |reason: String| CheckpointError::Malformed { path: path.to_path_buf(), reason };
    let reader = pytorch_reader::PytorchReader::new(path).map_err(|e| malformed(e.to_string()))?;
    let all = reader.into_tensors();
    // A nested checkpoint dict: take the model's state dict; otherwise the file is one.
    let prefix =
        PYTORCH_MODEL_KEYS.iter().map(|k| format!("{k}.")).find(|p| all.keys().any(|n| n.starts_with(p.as_str())));
    let mut tensors = HashMap::new();
    let mut skipped = Vec::new();
    for (name, t) in all {
        match &prefix {
            Some(p) => match name.strip_prefix(p.as_str()) {
                Some(short) => {
                    tensors.insert(short.to_string(), t);
                }
                None => skipped.push(name),
            },
            None => {
                tensors.insert(name, t);
            }
        }
    }
    if !skipped.is_empty() {
        skipped.sort();
        tracing::warn!(
            path = %path.display(),
            skipped = skipped.len(),
            first = %skipped[0],
            "tensors outside the model's state dict are not imported (PyTorch optimizer state is keyed by parameter \
             index, which the file does not tie to names); the optimizer will start fresh"
        );
    }
    let mut entries = Vec::new();
    for (name, t) in &tensors {
        let dtype = dtype_of_pytorch(t.dtype())
            .ok_or_else(|| malformed(format!("tensor `{name}` has unsupported dtype {:?}", t.dtype())))?;
        entries.push((name.clone(), dtype, t.shape().to_vec()));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut metadata = HashMap::new();
    if let Ok(pytorch_reader::PickleValue::Dict(top)) = pytorch_reader::PytorchReader::read_pickle_data(path, None) {
        for key in ["epoch", "step", "train_loss", "val_loss"] {
            match top.get(key) {
                Some(pytorch_reader::PickleValue::Int(v)) => {
                    metadata.insert(key.to_string(), v.to_string());
                }
                Some(pytorch_reader::PickleValue::Float(v)) => {
                    metadata.insert(key.to_string(), v.to_string());
                }
                _ => {}
            }
        }
    }
    Ok(AnyCheckpoint {
        path: path.to_path_buf(),
        kind: FileKind::Pytorch,
        entries,
        metadata,
        body: Body::Pytorch(tensors),
    })
}

fn dtype_of_pytorch(d: pytorch_reader::DType) -> Option<Dtype> {
    use pytorch_reader::DType as P;
    Some(match d {
        P::F64 => Dtype::F64,
        P::F32 => Dtype::F32,
        P::F16 => Dtype::F16,
        P::BF16 => Dtype::BF16,
        P::I64 => Dtype::I64,
        P::I32 => Dtype::I32,
        P::I16 => Dtype::I16,
        P::I8 => Dtype::I8,
        P::U8 => Dtype::U8,
        P::Bool => Dtype::BOOL,
        P::U64 => Dtype::U64,
        P::U32 => Dtype::U32,
        P::U16 => Dtype::U16,
    })
}

/// What `train ckpt inspect` reports. The field names are stable; `null` where a format
/// does not record the value.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The file.
    pub path: PathBuf,
    /// `safetensors`, `compressed` or `pytorch`.
    pub format: FileKind,
    /// Whether the file is compressed.
    pub compressed: bool,
    /// Whether the file carries `train`'s metadata.
    pub train_checkpoint: bool,
    /// `format_version` of `train`'s metadata.
    pub format_version: Option<u32>,
    /// Epochs completed.
    pub epoch: Option<u32>,
    /// Optimiser steps taken.
    pub step: Option<u64>,
    /// Training loss of the last epoch.
    pub train_loss: Option<f64>,
    /// Validation loss of the last epoch.
    pub val_loss: Option<f64>,
    /// Number of tensors.
    pub tensors: usize,
    /// Bytes of model tensors (uncompressed).
    pub model_bytes: u64,
    /// Bytes of optimiser-state tensors (uncompressed).
    pub optimizer_bytes: u64,
    /// Bytes of the largest tensor (what a streaming load holds at once).
    pub largest_tensor_bytes: u64,
    /// Whether optimiser state is present.
    pub has_optimizer_state: bool,
    /// Size of the file.
    pub file_bytes: u64,
    /// (model + optimiser bytes) / file bytes.
    pub compression_ratio: f64,
}

/// Inspects `path` without reading tensor data.
pub fn inspect(path: &Path) -> Result<Inspection, CheckpointError> {
    let ckpt = AnyCheckpoint::open(path)?;
    let file_bytes =
        std::fs::metadata(path).map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })?.len();
    let bytes =
        |(_, d, s): &(String, Dtype, Vec<usize>)| (s.iter().product::<usize>() * d.bitsize()).div_ceil(8) as u64;
    let (opt, model): (Vec<_>, Vec<_>) = ckpt.entries.iter().partition(|e| e.0.starts_with(OPTIMIZER_PREFIX));
    let model_bytes: u64 = model.iter().map(|e| bytes(e)).sum();
    let optimizer_bytes: u64 = opt.iter().map(|e| bytes(e)).sum();
    let largest_tensor_bytes = ckpt.entries.iter().map(bytes).max().unwrap_or(0);
    let meta = ckpt.meta();
    let number = |k: &str| ckpt.metadata.get(k).and_then(|v| v.parse::<f64>().ok());
    Ok(Inspection {
        path: path.to_path_buf(),
        format: ckpt.kind,
        compressed: ckpt.kind == FileKind::Compressed,
        train_checkpoint: meta.is_some(),
        format_version: meta.as_ref().map(|m| m.format_version),
        epoch: meta.as_ref().map(|m| m.epoch).or_else(|| number("epoch").map(|v| v as u32)),
        step: meta.as_ref().map(|m| m.step).or_else(|| number("step").map(|v| v as u64)),
        train_loss: meta.as_ref().map(|m| m.train_loss).or_else(|| number("train_loss")),
        val_loss: meta.as_ref().map(|m| m.val_loss).or_else(|| number("val_loss")),
        tensors: ckpt.entries.len(),
        model_bytes,
        optimizer_bytes,
        largest_tensor_bytes,
        has_optimizer_state: !opt.is_empty(),
        file_bytes,
        compression_ratio: (model_bytes + optimizer_bytes) as f64 / file_bytes.max(1) as f64,
    })
}

/// Writes `input`'s tensors (all, or the model's only when `strip_optimizer`) to `output` in
/// the format its name says, with `train`'s metadata (kept from the input, or made from what
/// a foreign file records). Atomic: `output` may be `input`.
pub fn convert(input: &Path, output: &Path, strip_optimizer: bool) -> Result<u64, CheckpointError> {
    let out_kind = FileKind::of(output)?;
    if out_kind == FileKind::Pytorch {
        return Err(CheckpointError::Malformed {
            path: output.to_path_buf(),
            reason: format!(
                "writing PyTorch pickle files is not supported; write {PLAIN_SUFFIX}, which Python opens with \
                 safetensors.torch.load_file"
            ),
        });
    }
    let ckpt = AnyCheckpoint::open(input)?;
    let mut tensors: BTreeMap<String, RawTensor> = BTreeMap::new();
    for (name, dtype, shape) in &ckpt.entries {
        if strip_optimizer && name.starts_with(OPTIMIZER_PREFIX) {
            continue;
        }
        tensors.insert(name.clone(), RawTensor { dtype: *dtype, shape: shape.clone(), data: ckpt.read(name)? });
    }
    let has_optimizer_state = tensors.keys().any(|n| n.starts_with(OPTIMIZER_PREFIX));
    let mut meta = ckpt.meta().unwrap_or_else(|| imported_meta(&ckpt.metadata));
    meta.has_optimizer_state = has_optimizer_state;
    let views: Vec<(&str, &RawTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let io = |source| CheckpointError::Io { path: output.to_path_buf(), source };
    if out_kind == FileKind::Compressed {
        drop(ckpt);
        atomic::write_atomic(output, |f| {
            format::write_compressed_views(f, &views, &meta).map_err(std::io::Error::other)
        })
        .map_err(io)
    } else {
        let bytes = format::serialize_views(output, &views, &meta)?;
        drop(ckpt);
        atomic::write_atomic(output, |f| format::emit(f, &bytes)).map_err(io)
    }
}

/// Metadata for a file `train` did not write: what it records, and markers for the rest
/// (no optimiser kind, an RNG scheme no run uses, so a resume from it says so).
fn imported_meta(found: &HashMap<String, String>) -> Meta {
    let get = |k: &str| found.get(k).and_then(|v| v.parse::<f64>().ok());
    Meta {
        format_version: FORMAT_VERSION,
        epoch: get("epoch").map_or(0, |v| v as u32),
        step: get("step").map_or(0, |v| v as u64),
        batches_into_epoch: 0,
        partial_loss_sum: 0.0,
        train_loss: get("train_loss").unwrap_or(f64::NAN),
        val_loss: get("val_loss").unwrap_or(f64::NAN),
        val_accuracy: f64::NAN,
        has_optimizer_state: false,
        optimizer: serde_json::json!({ "kind": "unknown" }),
        lr_scheduler: serde_json::json!({ "kind": "unknown" }),
        rng: RngState { seed: 0, scheme: "imported".into() },
        config_sha256: String::new(),
        tool_version: format!("train {} (imported)", env!("CARGO_PKG_VERSION")),
    }
}

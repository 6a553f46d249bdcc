//! Opening each kind of file: parsing a safetensors header (checked against the file's
//! length before anything is allocated), a compressed file's index, or a pickle. Each says
//! why a file is not of its kind ([`KindError`]); the caller tries the kinds the content can
//! be and reports why none fits.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use safetensors::tensor::Dtype;
use serde::Deserialize;

use super::body::Body;
use super::entry::Entry;
use super::kind::{FileKind, MAX_HEADER_BYTES};
use super::pickle::{scalar_of, OptimizerAt, Pickle, SCALAR_KEYS};
use crate::dtype;
use crate::meta::CHECKSUMS_KEY;
use crate::names::Role;

/// Why a file does not read as the kind it was tried as; each message is the reason alone
/// (the caller names the file).
#[derive(Debug, thiserror::Error)]
pub(super) enum KindError {
    /// The safetensors header's length could not be read.
    #[error("cannot read the header length: {0}")]
    HeaderLengthUnreadable(std::io::Error),
    /// The header claims more than safetensors allows.
    #[error("header length {len} exceeds the {MAX_HEADER_BYTES}-byte limit: not a safetensors file, or a damaged one")]
    HeaderTooLong {
        /// The length claimed.
        len: u64,
    },
    /// The header claims more bytes than the file has.
    #[error("truncated: the header claims {len} bytes, the file has {total}")]
    HeaderTruncated {
        /// The length claimed.
        len: u64,
        /// The file's length.
        total: u64,
    },
    /// The header could not be read.
    #[error("cannot read the header: {0}")]
    HeaderUnreadable(std::io::Error),
    /// The header is not safetensors' JSON.
    #[error("header: {0}")]
    HeaderJson(serde_json::Error),
    /// A tensor's dtype is not one this version reads.
    #[error("tensor `{tensor}` has dtype {dtype}, which this version does not read")]
    UnknownDtype {
        /// The tensor.
        tensor: String,
        /// The dtype as the header names it.
        dtype: String,
    },
    /// A tensor's shape overflows.
    #[error("tensor `{tensor}`: shape {shape:?} overflows")]
    ShapeOverflows {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A tensor's byte range does not fit its dtype and shape.
    #[error("tensor `{tensor}`: offsets {begin}..{end} do not fit {dtype:?} {shape:?}")]
    OffsetsMismatch {
        /// The tensor.
        tensor: String,
        /// Its first byte.
        begin: u64,
        /// One past its last.
        end: u64,
        /// Its dtype.
        dtype: Dtype,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// The tensors' byte ranges leave a gap or overlap.
    #[error("tensor `{tensor}` starts at {begin}, expected {expected}")]
    NotContiguous {
        /// The tensor.
        tensor: String,
        /// Where it starts.
        begin: u64,
        /// Where the one before it ends.
        expected: u64,
    },
    /// The tensors do not cover the data section exactly.
    #[error("truncated or padded: tensors cover {covered} bytes of a {data_len}-byte data section")]
    DataSectionMismatch {
        /// Bytes the tensors cover.
        covered: u64,
        /// Bytes of the data section.
        data_len: u64,
    },
    /// The per-tensor checksums are not the JSON they should be.
    #[error("metadata `{CHECKSUMS_KEY}`: {0}")]
    ChecksumsJson(serde_json::Error),
    /// The compressed format's reader refused the file.
    #[error("{0}")]
    Compressed(#[from] tckpt::Error),
    /// pytorch-reader could not read the `torch.save` file.
    #[error("PyTorch file: {0}")]
    Pytorch(#[from] pytorch_reader::PytorchError),
    /// The pickle holds something other than a dict.
    #[error("PyTorch file: the pickle's root is not a dict")]
    PickleRootNotDict,
    /// A tensor's dtype is not one a checkpoint holds.
    #[error("tensor `{tensor}` has unsupported dtype {dtype:?}")]
    UnsupportedPytorchDtype {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: pytorch_reader::DType,
    },
    /// A model tensor's short name is also the dotted path of one beside the model.
    #[error("two tensors are named `{0}`: a model tensor and one beside the model's state dict")]
    DuplicateName(String),
    /// A one-element tensor (`loss`, `epoch`) could not be read.
    #[error("tensor `{tensor}`: {source}")]
    ScalarUnreadable {
        /// The tensor.
        tensor: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What opening a file as one kind gives: where its bytes are, its (model) tensors, its
/// metadata map and, for a plain file, its per-tensor checksums.
pub(super) type Opened = (Body, Vec<Entry>, HashMap<String, String>, Option<HashMap<String, String>>);

/// Opens `file` (at `path`, `len` bytes) as `kind`; with `warn`, a `torch.save` file logs
/// what a load of its weights leaves out. A `torch.save` file also gives what it holds
/// beside the model's weights.
pub(super) fn open_kind(
    path: &Path,
    file: File,
    len: u64,
    kind: FileKind,
    warn: bool,
) -> Result<(Opened, Option<PytorchExtra>), KindError> {
    Ok(match kind {
        FileKind::Safetensors => (open_plain(file, len)?, None),
        FileKind::Compressed => (open_compressed(file)?, None),
        FileKind::Pytorch => {
            let (opened, extra) = open_pytorch(path, warn)?;
            (opened, Some(extra))
        }
        // Its shards are checkpoint files themselves: `CheckpointFile` opens them.
        FileKind::Sharded => unreachable!("an index is opened by CheckpointFile::open_sharded"),
    })
}

/// Keys under which `torch.save`d dicts commonly nest a model's state dict, tried in order.
const PYTORCH_MODEL_KEYS: &[&str] = &["model_state_dict", "state_dict", "model"];

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
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

fn open_plain(file: File, total: u64) -> Result<Opened, KindError> {
    let mut len = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut len, 0).map_err(KindError::HeaderLengthUnreadable)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(KindError::HeaderTooLong { len });
    }
    let data_start = 8 + len;
    let data_len = total.checked_sub(data_start).ok_or(KindError::HeaderTruncated { len, total })?;
    let mut header = vec![0u8; len as usize];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut header, 8).map_err(KindError::HeaderUnreadable)?;
    let header: Header = serde_json::from_slice(&header).map_err(KindError::HeaderJson)?;
    let entries = entries_of(&header, data_len)?;
    let checksums = match header.metadata.as_ref().and_then(|m| m.get(CHECKSUMS_KEY)) {
        Some(j) => Some(serde_json::from_str(j).map_err(KindError::ChecksumsJson)?),
        None => None,
    };
    Ok((Body::Plain { file, data_start }, entries, header.metadata.unwrap_or_default(), checksums))
}

/// The entries of a header, checked: known dtypes, each tensor's byte range matches its
/// dtype and shape (checked arithmetic), and the ranges tile the data section exactly, as
/// safetensors requires.
fn entries_of(header: &Header, data_len: u64) -> Result<Vec<Entry>, KindError> {
    let mut entries = Vec::with_capacity(header.tensors.len());
    for (name, t) in &header.tensors {
        let dtype: Dtype = serde_json::from_value(serde_json::Value::String(t.dtype.clone()))
            .map_err(|_| KindError::UnknownDtype { tensor: name.clone(), dtype: t.dtype.clone() })?;
        let (begin, end) = t.data_offsets;
        let bits = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.bitsize()))
            .ok_or_else(|| KindError::ShapeOverflows { tensor: name.clone(), shape: t.shape.clone() })?;
        if bits % 8 != 0 || end < begin || end - begin != (bits / 8) as u64 {
            return Err(KindError::OffsetsMismatch { tensor: name.clone(), begin, end, dtype, shape: t.shape.clone() });
        }
        entries.push(Entry::new(name.clone(), dtype, t.shape.clone(), end - begin, begin));
    }
    // Empty tensors first among those sharing an offset (Python's safetensors puts them there).
    entries.sort_by_key(|e| (e.begin, e.bytes));
    let mut at = 0;
    for e in &entries {
        if e.begin != at {
            return Err(KindError::NotContiguous { tensor: e.name.clone(), begin: e.begin, expected: at });
        }
        at += e.bytes;
    }
    if at != data_len {
        return Err(KindError::DataSectionMismatch { covered: at, data_len });
    }
    Ok(entries)
}

fn open_compressed(file: File) -> Result<Opened, KindError> {
    // Opening reads the header, trailer and index (checked against its own checksum) only;
    // tensors are decoded straight from the file's mapped pages, reading overlapping decoding.
    let reader = tckpt::Reader::from_file(file, 0)?;
    let entries = reader
        .tensors()
        .iter()
        .map(|t| Entry::new(t.name.clone(), dtype::from_compressed(t.dtype), t.shape.clone(), t.raw_len, 0))
        .collect();
    let metadata = reader.metadata().clone().into_iter().collect();
    Ok((Body::Compressed(Box::new(std::sync::Mutex::new(reader))), entries, metadata, None))
}

/// What opening a `torch.save` file gives beside [`Opened`]: the tensors outside the
/// model's state dict (by their dotted path in the pickle) and the pickle's tree.
pub(super) struct PytorchExtra {
    pub(super) others: Vec<Entry>,
    pub(super) pickle: Pickle,
}

/// Opens a `torch.save` file: the model's state dict (a nested one under
/// [`PYTORCH_MODEL_KEYS`], else the file's tensors but an optimizer's), the tensors beside
/// it, the scalars of [`SCALAR_KEYS`] (numbers, or tensors of one element, read here), and
/// where its optimizer state dict is. Reads no other tensor data. With `warn`, logs what a
/// load of the weights leaves out (the optimizer state, other tensors).
fn open_pytorch(path: &Path, warn: bool) -> Result<(Opened, PytorchExtra), KindError> {
    let reader = pytorch_reader::PytorchReader::new(path)?;
    let all = reader.into_tensors();
    let root = match pytorch_reader::PytorchReader::read_pickle_data(path, None) {
        Ok(pytorch_reader::PickleValue::Dict(root)) => root,
        Ok(_) => return Err(KindError::PickleRootNotDict),
        Err(e) => return Err(e.into()),
    };
    let optimizer = OptimizerAt::find(&root);
    // A nested checkpoint dict: take the model's state dict; otherwise the file is one (but
    // for an optimizer's state dict, nested or the whole file).
    let prefix =
        PYTORCH_MODEL_KEYS.iter().map(|k| format!("{k}.")).find(|p| all.keys().any(|n| n.starts_with(p.as_str())));
    let optimizer_prefix = optimizer.as_ref().map(OptimizerAt::prefix);
    let mut tensors = HashMap::new();
    let mut model = Vec::new();
    let mut others = Vec::new();
    for (name, t) in all {
        let dtype = dtype::from_pytorch(t.dtype())
            .ok_or_else(|| KindError::UnsupportedPytorchDtype { tensor: name.clone(), dtype: t.dtype() })?;
        let short = match (&prefix, &optimizer_prefix) {
            (Some(p), _) => name.strip_prefix(p.as_str()).map(str::to_string),
            (None, Some(o)) if name.starts_with(o.as_str()) => None,
            (None, _) => Some(name.clone()),
        };
        let entry = |name: &str| Entry::new(name.to_string(), dtype, t.shape().to_vec(), t.byte_len() as u64, 0);
        let key = match short {
            Some(short) => {
                model.push(entry(&short));
                short
            }
            None => {
                // Beside the model: a PyTorch optimizer's state, or anything else.
                let in_optimizer = optimizer_prefix.as_deref().is_some_and(|p| name.starts_with(p));
                others.push(Entry { role: if in_optimizer { Role::Optimizer } else { Role::Other }, ..entry(&name) });
                name
            }
        };
        if tensors.insert(key.clone(), t).is_some() {
            return Err(KindError::DuplicateName(key));
        }
    }
    model.sort_by(|a, b| a.name.cmp(&b.name));
    others.sort_by(|a, b| a.name.cmp(&b.name));

    let mut metadata = HashMap::new();
    for key in SCALAR_KEYS {
        let value = match root.get(*key) {
            // Kept exact: a step count may exceed what an f64 holds exactly.
            Some(pytorch_reader::PickleValue::Int(v)) => {
                metadata.insert(key.to_string(), v.to_string());
                continue;
            }
            Some(pytorch_reader::PickleValue::Float(v)) => Some(*v),
            // A 0-d tensor (`'loss': loss.detach()`): read its few bytes.
            Some(pytorch_reader::PickleValue::Unsupported(_)) => {
                match (others.iter().find(|e| e.name == *key), tensors.get(*key)) {
                    (Some(e), Some(t)) => {
                        let bytes = t
                            .read()
                            .map_err(|source| KindError::ScalarUnreadable { tensor: key.to_string(), source })?;
                        scalar_of(e.dtype, &bytes)
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(v) = value {
            metadata.insert(key.to_string(), v.to_string());
        }
    }

    let beside: Vec<&str> = others
        .iter()
        .map(|e| e.name.as_str())
        .filter(|n| !SCALAR_KEYS.contains(n) && !optimizer_prefix.as_deref().is_some_and(|p| n.starts_with(p)))
        .collect();
    if let Some(first) = beside.first().filter(|_| warn) {
        tracing::warn!(
            path = %path.display(),
            skipped = beside.len(),
            first = %first,
            "tensors outside the model's state dict are not loaded as weights"
        );
    }
    Ok(((Body::Pytorch(tensors), model, metadata, None), PytorchExtra { others, pickle: Pickle { root, optimizer } }))
}

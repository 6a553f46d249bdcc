//! Opening each kind of file: parsing a safetensors header (checked against the file's
//! length before anything is allocated), a compressed file's index, or a pickle.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use safetensors::tensor::Dtype;
use serde::Deserialize;

use super::pytorch::{scalar_of, OptimizerAt, Pickle, SCALAR_KEYS};
use super::{Body, Entry};
use crate::dtype;
use crate::format::Role;
use crate::format::CHECKSUMS_KEY;

/// The safetensors crate's own cap on the JSON header; we refuse larger before reading it.
pub(super) const MAX_HEADER_BYTES: u64 = 100_000_000;
/// Keys under which `torch.save`d dicts commonly nest a model's state dict, tried in order.
const PYTORCH_MODEL_KEYS: &[&str] = &["model_state_dict", "state_dict", "model"];

pub(super) type Opened = (Body, Vec<Entry>, HashMap<String, String>, Option<HashMap<String, String>>);

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

pub(super) fn open_plain(file: File, total: u64) -> Result<Opened, String> {
    let mut len = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut len, 0)
        .map_err(|e| format!("cannot read the header length: {e}"))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(format!(
            "header length {len} exceeds the {MAX_HEADER_BYTES}-byte limit: not a safetensors file, or a damaged one"
        ));
    }
    let data_start = 8 + len;
    let data_len = total
        .checked_sub(data_start)
        .ok_or_else(|| format!("truncated: the header claims {len} bytes, the file has {total}"))?;
    let mut header = vec![0u8; len as usize];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut header, 8)
        .map_err(|e| format!("cannot read the header: {e}"))?;
    let header: Header = serde_json::from_slice(&header).map_err(|e| format!("header: {e}"))?;
    let entries = entries_of(&header, data_len)?;
    let checksums = match header.metadata.as_ref().and_then(|m| m.get(CHECKSUMS_KEY)) {
        Some(j) => Some(serde_json::from_str(j).map_err(|e| format!("metadata `{CHECKSUMS_KEY}`: {e}"))?),
        None => None,
    };
    Ok((Body::Plain { file, data_start }, entries, header.metadata.unwrap_or_default(), checksums))
}

/// The entries of a header, checked: known dtypes, each tensor's byte range matches its
/// dtype and shape (checked arithmetic), and the ranges tile the data section exactly, as
/// safetensors requires.
fn entries_of(header: &Header, data_len: u64) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::with_capacity(header.tensors.len());
    for (name, t) in &header.tensors {
        let dtype: Dtype = serde_json::from_value(serde_json::Value::String(t.dtype.clone()))
            .map_err(|_| format!("tensor `{name}` has dtype {}, which this version does not read", t.dtype))?;
        let (begin, end) = t.data_offsets;
        let bits = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.bitsize()))
            .ok_or_else(|| format!("tensor `{name}`: shape {:?} overflows", t.shape))?;
        if bits % 8 != 0 || end < begin || end - begin != (bits / 8) as u64 {
            return Err(format!("tensor `{name}`: offsets {begin}..{end} do not fit {dtype:?} {:?}", t.shape));
        }
        entries.push(Entry::new(name.clone(), dtype, t.shape.clone(), end - begin, begin));
    }
    // Empty tensors first among those sharing an offset (Python's safetensors puts them there).
    entries.sort_by_key(|e| (e.begin, e.bytes));
    let mut at = 0;
    for e in &entries {
        if e.begin != at {
            return Err(format!("tensor `{}` starts at {}, expected {at}", e.name, e.begin));
        }
        at += e.bytes;
    }
    if at != data_len {
        return Err(format!("truncated or padded: tensors cover {at} bytes of a {data_len}-byte data section"));
    }
    Ok(entries)
}

pub(super) fn open_compressed(file: File) -> Result<Opened, String> {
    // Opening reads the header, trailer and index (checked against its own checksum) only;
    // tensors are decoded straight from the file's mapped pages, reading overlapping decoding.
    let reader = train_ckpt::Reader::from_file(file, 0).map_err(|e| e.to_string())?;
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
pub(super) fn open_pytorch(path: &Path, warn: bool) -> Result<(Opened, PytorchExtra), String> {
    let reader = pytorch_reader::PytorchReader::new(path).map_err(|e| format!("PyTorch file: {e}"))?;
    let all = reader.into_tensors();
    let root = match pytorch_reader::PytorchReader::read_pickle_data(path, None) {
        Ok(pytorch_reader::PickleValue::Dict(root)) => root,
        Ok(_) => return Err("PyTorch file: the pickle's root is not a dict".into()),
        Err(e) => return Err(format!("PyTorch file: {e}")),
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
            .ok_or_else(|| format!("tensor `{name}` has unsupported dtype {:?}", t.dtype()))?;
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
            return Err(format!("two tensors are named `{key}`: a model tensor and one beside the model's state dict"));
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
                        let bytes = t.read().map_err(|err| format!("tensor `{key}`: {err}"))?;
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

//! Opening each kind of file: parsing a safetensors header (checked against the file's
//! length before anything is allocated), a compressed file's index, or a pickle.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use safetensors::tensor::Dtype;
use serde::Deserialize;

use super::{Body, Entry};
use crate::dtype;
use crate::format::CHECKSUMS_KEY;

/// The safetensors crate's own cap on the JSON header; we refuse larger before reading it.
const MAX_HEADER_BYTES: u64 = 100_000_000;
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
        entries.push(Entry { name: name.clone(), dtype, shape: t.shape.clone(), begin, bytes: end - begin });
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
        .map(|t| Entry {
            name: t.name.clone(),
            dtype: dtype::from_compressed(t.dtype),
            shape: t.shape.clone(),
            begin: 0,
            bytes: t.raw_len,
        })
        .collect();
    let metadata = reader.metadata().clone().into_iter().collect();
    Ok((Body::Compressed(Box::new(std::sync::Mutex::new(reader))), entries, metadata, None))
}

pub(super) fn open_pytorch(path: &Path) -> Result<Opened, String> {
    let reader = pytorch_reader::PytorchReader::new(path).map_err(|e| format!("PyTorch file: {e}"))?;
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
    let mut entries = Vec::with_capacity(tensors.len());
    for (name, t) in &tensors {
        let dtype = dtype::from_pytorch(t.dtype())
            .ok_or_else(|| format!("tensor `{name}` has unsupported dtype {:?}", t.dtype()))?;
        entries.push(Entry {
            name: name.clone(),
            dtype,
            shape: t.shape().to_vec(),
            begin: 0,
            bytes: t.byte_len() as u64,
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
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
    Ok((Body::Pytorch(tensors), entries, metadata, None))
}

//! `train ckpt`: inspect, verify, convert and strip, over any checkpoint the one reader
//! ([`crate::source::CheckpointFile`]) opens: ours (`*.safetensors`, `*.tckpt`), foreign
//! safetensors files, and `torch.save` files (`*.pt`, `*.pth`, `*.bin`; read only), either a
//! state dict or a dict holding `model_state_dict` (or `state_dict` / `model`) with `epoch`,
//! `train_loss`, `val_loss` beside it, as the seed guide's Python code saves them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::atomic;
use crate::format::{self, Meta, Position, RawTensor, RngState, FORMAT_VERSION, OPTIMIZER_PREFIX, PLAIN_SUFFIX};
use crate::source::{CheckpointFile, FileKind};
use crate::Error;

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
pub fn inspect(path: &Path) -> Result<Inspection, Error> {
    let ckpt = CheckpointFile::open(path)?;
    let file_bytes = std::fs::metadata(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?.len();
    let (opt, model): (Vec<_>, Vec<_>) = ckpt.entries().iter().partition(|e| e.name.starts_with(OPTIMIZER_PREFIX));
    let model_bytes: u64 = model.iter().map(|e| e.bytes).sum();
    let optimizer_bytes: u64 = opt.iter().map(|e| e.bytes).sum();
    let largest_tensor_bytes = ckpt.entries().iter().map(|e| e.bytes).max().unwrap_or(0);
    let meta = ckpt.meta();
    let number = |k: &str| ckpt.metadata().get(k).and_then(|v| v.parse::<f64>().ok());
    Ok(Inspection {
        path: path.to_path_buf(),
        format: ckpt.kind(),
        compressed: ckpt.kind() == FileKind::Compressed,
        train_checkpoint: meta.is_some(),
        format_version: meta.map(|m| m.format_version),
        epoch: meta.map(Meta::epoch).or_else(|| number("epoch").map(|v| v as u32)),
        step: meta.map(Meta::step).or_else(|| number("step").map(|v| v as u64)),
        train_loss: meta.map(|m| m.train_loss).or_else(|| number("train_loss")),
        val_loss: meta.map(|m| m.val_loss).or_else(|| number("val_loss")),
        tensors: ckpt.entries().len(),
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
pub fn convert(input: &Path, output: &Path, strip_optimizer: bool) -> Result<u64, Error> {
    let out_kind = FileKind::of_name(output)?;
    if out_kind == FileKind::Pytorch {
        return Err(Error::Unwritable {
            path: output.to_path_buf(),
            reason: format!(
                "writing PyTorch pickle files is not supported; write {PLAIN_SUFFIX}, which Python opens with \
                 safetensors.torch.load_file"
            ),
        });
    }
    let ckpt = CheckpointFile::open(input)?;
    let kept: Vec<&crate::source::Entry> =
        ckpt.entries().iter().filter(|e| !(strip_optimizer && e.name.starts_with(OPTIMIZER_PREFIX))).collect();
    let mut data: Vec<Vec<u8>> = kept.iter().map(|e| vec![0u8; e.bytes as usize]).collect();
    let mut targets: Vec<(&str, &mut [u8])> =
        kept.iter().zip(data.iter_mut()).map(|(e, d)| (e.name.as_str(), d.as_mut_slice())).collect();
    ckpt.read_many_into(&mut targets)?;
    let tensors: BTreeMap<String, RawTensor> = kept
        .iter()
        .zip(data)
        .map(|(e, data)| (e.name.clone(), RawTensor { dtype: e.dtype, shape: e.shape.clone(), data }))
        .collect();
    let has_optimizer_state = tensors.keys().any(|n| n.starts_with(OPTIMIZER_PREFIX));
    let mut meta = ckpt.meta_or_imported();
    meta.has_optimizer_state = has_optimizer_state;
    let views: Vec<(&str, &RawTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let io = |source| Error::Io { path: output.to_path_buf(), source };
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
pub(crate) fn imported_meta(found: &HashMap<String, String>) -> Meta {
    let get = |k: &str| found.get(k).and_then(|v| v.parse::<f64>().ok());
    Meta {
        format_version: FORMAT_VERSION,
        position: Position {
            epoch: get("epoch").map_or(0, |v| v as u32),
            step: get("step").map_or(0, |v| v as u64),
            batches_into_epoch: 0,
            partial_loss_sum: 0.0,
        },
        batch_size: None,
        train_loss: get("train_loss").unwrap_or(f64::NAN),
        val_loss: get("val_loss").unwrap_or(f64::NAN),
        val_accuracy: f64::NAN,
        has_optimizer_state: false,
        optimizer: serde_json::json!({ "kind": "unknown" }),
        lr_scheduler: serde_json::json!({ "kind": "unknown" }),
        rng: RngState { seed: 0, scheme: IMPORTED_RNG_SCHEME.into() },
        config_sha256: String::new(),
        tool_version: format!("train {} (imported)", env!("CARGO_PKG_VERSION")),
    }
}

/// The RNG scheme recorded for files `train` did not write.
pub const IMPORTED_RNG_SCHEME: &str = "imported";

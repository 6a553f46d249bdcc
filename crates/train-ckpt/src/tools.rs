//! `train ckpt`: inspect, verify, convert and strip, over any checkpoint the one reader
//! ([`crate::source::CheckpointFile`]) opens: ours (`*.safetensors`, `*.tckpt`), foreign
//! safetensors files, and `torch.save` files (`*.pt`, `*.pth`, `*.bin`; read only), either a
//! state dict or a dict holding `model_state_dict` (or `state_dict` / `model`) with `epoch`,
//! `train_loss`, `val_loss` or `loss` (Python numbers or 0-d tensors) and
//! `optimizer_state_dict` beside it, as the seed guide's Python code saves them.

use std::borrow::Cow;
use std::cell::RefCell;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Error;
use crate::meta::{Meta, FORMAT_VERSION};
use crate::names::{Role, PLAIN_SUFFIX};
use crate::source::{CheckpointFile, Entry, FileKind, OptimizerSummary};
use crate::write;
use safetensors::tensor::{Dtype, View};

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
    /// Whether `train`'s metadata is covered by its own checksum (checked on opening): from
    /// format version 2 on. False for a version-1 file ("v1: metadata not covered": its
    /// epoch, step and losses could have been altered undetected) and for foreign files.
    pub metadata_covered: bool,
    /// Epochs completed.
    pub epoch: Option<u32>,
    /// Optimiser steps taken.
    pub step: Option<u64>,
    /// Training loss of the last epoch (a foreign file's `train_loss`, else its `loss`).
    pub train_loss: Option<f64>,
    /// Validation loss of the last epoch.
    pub val_loss: Option<f64>,
    /// Number of tensors: the model's and the optimizer's (ours), or for a `torch.save`
    /// file every tensor it holds (its model state dict, optimizer state and the rest).
    pub tensors: usize,
    /// Bytes of model tensors (uncompressed).
    pub model_bytes: u64,
    /// Bytes of optimiser-state tensors (uncompressed).
    pub optimizer_bytes: u64,
    /// Number of optimiser-state tensors (ours: `optimizer/...`; a `torch.save` file's: the
    /// tensors of its optimizer state dict, `step` included where it is a tensor).
    pub optimizer_tensors: usize,
    /// Bytes of the largest tensor (what a streaming load holds at once).
    pub largest_tensor_bytes: u64,
    /// Whether optimiser state is present.
    pub has_optimizer_state: bool,
    /// What the optimiser state is: kind, parameters with state, each slot's count
    /// (`exp_avg`, `momentum_buffer`, `step`, ...) and a PyTorch file's param groups;
    /// `null` when there is none.
    pub optimizer: Option<OptimizerSummary>,
    /// Size of the file (of a sharded checkpoint: its index and every shard).
    pub file_bytes: u64,
    /// The shard files of a sharded checkpoint (0 for one file).
    pub shard_files: usize,
    /// (model + optimiser bytes) / file bytes.
    pub compression_ratio: f64,
    /// With `--tensors`: every tensor's name, dtype, shape and bytes, model first (ours:
    /// in file order; a `torch.save` file: by name, then the tensors beside the model's by
    /// their dotted path in the pickle). Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensor_list: Option<Vec<Entry>>,
}

/// Inspects `path` without reading tensor data (but for the few bytes of a `torch.save`
/// file's 0-d `epoch`/`loss` tensors); with `list_tensors`, lists every tensor.
///
/// Opens anything [`CheckpointFile::open`] does, and a bare PyTorch optimizer state dict
/// (`torch.save(optimizer.state_dict())`) besides.
pub fn inspect(path: &Path, list_tensors: bool) -> Result<Inspection, Error> {
    let ckpt = CheckpointFile::open_to_inspect(path)?;
    let size =
        |p: &Path| std::fs::metadata(p).map(|m| m.len()).map_err(|source| Error::Io { path: p.to_path_buf(), source });
    // A sharded checkpoint is its index and its shards.
    let mut file_bytes = size(path)?;
    for shard in ckpt.shard_paths() {
        file_bytes += size(shard)?;
    }
    let summary = ckpt.optimizer_summary()?;
    // A PyTorch optimizer state dict's tensors are those under its key (or the whole file).
    let all: Vec<Entry> = ckpt.entries().iter().chain(ckpt.other_entries()).cloned().collect();
    let bytes_of = |r: Role| all.iter().filter(|t| t.role == r).map(|t| t.bytes).sum::<u64>();
    let model_bytes = bytes_of(Role::Model);
    let optimizer_bytes = bytes_of(Role::Optimizer);
    let optimizer_tensors = all.iter().filter(|t| t.role == Role::Optimizer).count();
    let largest_tensor_bytes = all.iter().map(|t| t.bytes).max().unwrap_or(0);
    let meta = ckpt.meta();
    let number = |k: &str| ckpt.metadata().get(k).and_then(|v| v.parse::<f64>().ok());
    Ok(Inspection {
        path: path.to_path_buf(),
        format: ckpt.kind(),
        compressed: ckpt.kind() == FileKind::Compressed,
        train_checkpoint: meta.is_some(),
        format_version: meta.map(|m| m.format_version),
        metadata_covered: ckpt.is_metadata_covered(),
        epoch: meta.map(Meta::epoch).or_else(|| number("epoch").map(|v| v as u32)),
        step: meta.map(Meta::step).or_else(|| number("step").map(|v| v as u64)),
        train_loss: meta.map(|m| m.train_loss).or_else(|| number("train_loss")).or_else(|| number("loss")),
        val_loss: meta.map(|m| m.val_loss).or_else(|| number("val_loss")),
        tensors: all.len(),
        model_bytes,
        optimizer_bytes,
        optimizer_tensors,
        largest_tensor_bytes,
        has_optimizer_state: summary.is_some(),
        optimizer: summary,
        file_bytes,
        shard_files: ckpt.shard_paths().len(),
        compression_ratio: (model_bytes + optimizer_bytes) as f64 / file_bytes.max(1) as f64,
        tensor_list: list_tensors.then_some(all),
    })
}

/// Writes `input`'s tensors (all, or the model's only when `strip_optimizer`) to `output` in
/// the format its name says, with `train`'s metadata (kept from the input, or made from what
/// a foreign file records). Atomic: `output` may be `input`.
pub fn convert(input: &Path, output: &Path, strip_optimizer: bool) -> Result<u64, Error> {
    let out_kind = FileKind::of_name(output)?;
    if out_kind == FileKind::Sharded {
        return Err(Error::Unwritable {
            path: output.to_path_buf(),
            reason: format!(
                "a sharded checkpoint is written by a data-parallel job, one shard a rank; write one file \
                 ({PLAIN_SUFFIX} or .tckpt), which consolidates it"
            ),
        });
    }
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
    // Ours carry their optimizer state as tensors, converted with the rest; a torch.save
    // file's optimizer state dict is keyed by parameter index and left out.
    let pytorch_optimizer = match ckpt.kind() {
        FileKind::Pytorch if !strip_optimizer => ckpt.optimizer_summary()?,
        _ => None,
    };
    if let Some(summary) = pytorch_optimizer {
        tracing::warn!(
            path = %input.display(),
            parameters = summary.parameters_with_state,
            "the file's PyTorch optimizer state (keyed by parameter index, not name) is not converted: the \
             optimizer will start fresh from the converted file; `train --resume` on the original imports it"
        );
    }
    let kept: Vec<&Entry> = ckpt.entries().iter().filter(|e| !(strip_optimizer && e.role == Role::Optimizer)).collect();
    let has_optimizer_state = kept.iter().any(|e| e.role == Role::Optimizer);
    let mut meta = ckpt.meta_or_imported();
    meta.has_optimizer_state = has_optimizer_state;
    // Written, and sealed, by this version (a version-1 input's metadata was used as written).
    meta.format_version = FORMAT_VERSION;
    // Streamed: each tensor is read (checked) when the writer asks for it and dropped after,
    // so a checkpoint larger than memory (a sharded one, say) converts in the memory of its
    // largest tensor.
    let failure = RefCell::new(None);
    let lazy: Vec<Lazy<'_>> = kept.iter().map(|e| Lazy { file: &ckpt, entry: e, failure: &failure }).collect();
    let views: Vec<(&str, &Lazy<'_>)> = lazy.iter().map(|l| (l.entry.name.as_str(), l)).collect();
    write::write_checkpoint_streamed(output, &views, meta.to_map(), out_kind == FileKind::Compressed, &failure)
}

/// A tensor of an open checkpoint that is read when a writer asks for its bytes; a read
/// that fails gives zeros and leaves its error in `failure` for the writer to find.
struct Lazy<'a> {
    file: &'a CheckpointFile,
    entry: &'a Entry,
    failure: &'a RefCell<Option<Error>>,
}

impl View for &Lazy<'_> {
    fn dtype(&self) -> Dtype {
        self.entry.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.entry.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self.file.read(&self.entry.name) {
            Ok(bytes) => Cow::Owned(bytes),
            Err(e) => {
                self.failure.borrow_mut().get_or_insert(e);
                Cow::Owned(vec![0; self.entry.bytes as usize])
            }
        }
    }
    fn data_len(&self) -> usize {
        self.entry.bytes as usize
    }
}

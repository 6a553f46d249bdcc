//! Loading a checkpoint into a model's variables, as a load plan says (`plan::reads`, whose
//! strategies `plan::strategy` predicts the peaks of):
//! - [`Strategy::Standard`] stages every tensor on the target device first, then assigns:
//!   peak = model + the whole checkpoint.
//! - [`Strategy::MemoryEfficient`] streams: each tensor is read from the file into one
//!   host tensor of its size (or straight into a host parameter), checked, copied into its
//!   parameter, and dropped before the next; the host never holds two checkpoint tensors
//!   at once.
//! - [`Strategy::ModelOnly`] streams the weights and leaves the optimiser's state unread.
//!
//! The optimiser's state comes back as tensors by slot key, for the training step to take:
//! this layer knows no optimiser.

use std::collections::HashMap;

use tch::{Device, Tensor};
use train_ckpt::{optimizer_key, CheckpointFile};

use super::config::MemoryConfig;
use super::error::CheckpointError;
use super::plan::load as load_plan;
use super::plan::reads::{self, How, Var};
use super::state::ShardPiece;
use super::tensors::{empty_tensors, host_targets, read_tensor};
use train_ckpt::strategy::{Sizes, Strategy};

/// What a load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOutcome {
    /// Model tensors restored.
    pub weights: usize,
    /// Optimiser state tensors read (0 when not loaded or absent).
    pub optimizer_tensors: usize,
    /// Whether the optimiser's state came from the checkpoint (set by whoever installs it).
    pub optimizer_restored: bool,
    /// Model variables the checkpoint lacks (non-strict loads only).
    pub missing: Vec<String>,
    /// Checkpoint weights the model lacks (non-strict loads only).
    pub unexpected: Vec<String>,
}

/// The optimiser's state read from a checkpoint, by slot key (`<param>/<slot>`), on the
/// load's device.
pub type OptimizerState = HashMap<String, Tensor>;

/// Loads `file` into `vars` (the model's named variables, on `device`) with `strategy`,
/// and with `with_optimizer` also reads its optimiser state. `strict`: every variable must
/// be present and no other weights may be; otherwise the differences are reported in the
/// outcome. Shapes and dtypes must match either way, checked before anything is read;
/// every tensor is checked against its checksum as it is read. A load that fails partway (a
/// damaged file, out of memory) leaves the model partly overwritten: reload or stop.
pub fn load_into(
    file: &CheckpointFile,
    vars: &HashMap<String, Tensor>,
    device: Device,
    strategy: Strategy,
    strict: bool,
    with_optimizer: bool,
) -> Result<(LoadOutcome, OptimizerState), CheckpointError> {
    let path = file.path().to_path_buf();
    crate::fault::check_load(strategy.name())
        .map_err(|source| CheckpointError::Torch { path: path.clone(), source })?;
    let layout: HashMap<String, Var> = vars
        .iter()
        .map(|(n, t)| {
            let host_contiguous = t.device() == Device::Cpu && t.is_contiguous();
            (n.clone(), Var { kind: t.kind(), shape: t.size(), host_contiguous, address: t.data_ptr() as usize })
        })
        .collect();
    let request = reads::Request {
        strategy,
        strict,
        with_optimizer,
        on_host: device == Device::Cpu,
        weights_file: file.meta().is_none(),
    };
    let plan = reads::reads(&path, file.entries(), &layout, request)?;
    if let Some(prefix) = plan.prefix {
        tracing::info!(path = %path.display(), "the file's names carry the wrapper prefix `{prefix}`: matched without it");
    }
    let entries = file.entries();
    let _guard = tch::no_grad_guard();
    let torch = |source| CheckpointError::Torch { path: path.clone(), source };
    let opt_entries: Vec<&train_ckpt::Entry> = plan.optimizer.iter().map(|&i| &entries[i]).collect();
    let mut opt_host = if plan.optimizer_with_weights { Some(empty_tensors(file, &opt_entries)?) } else { None };
    let var = |r: &reads::Read| vars[&r.var].shallow_clone();
    let staged: Vec<&reads::Read> = plan.weights.iter().filter(|r| r.how == How::Staged).collect();
    // In place: no staging copy at all, and a compressed file decodes in parallel, across
    // tensors as well as within them. A checksum is checked after its read, so a damaged
    // file can leave parameters overwritten; the load then fails and the caller reloads.
    let mut in_place: Vec<(Tensor, usize)> = Vec::new();
    for r in &plan.weights {
        let e = &entries[r.entry];
        match r.how {
            How::InPlace => in_place.push((var(r), r.entry)),
            How::InPlaceAlone => file.read_into(&e.name, bytes_of(&mut var(r), e.bytes))?,
            How::ViaHost => {
                let host = read_tensor(file, e)?;
                var(r).f_copy_(&host).map_err(torch)?;
            }
            How::Nothing | How::Staged => {}
        }
    }
    let mut targets: Vec<(&str, &mut [u8])> =
        in_place.iter_mut().map(|(t, i)| (entries[*i].name.as_str(), bytes_of(t, entries[*i].bytes))).collect();
    // Standard on the CPU stages into host tensors read in the same parallel read; on a
    // device each is read and moved on its own.
    let staged_entries: Vec<&train_ckpt::Entry> = staged.iter().map(|r| &entries[r.entry]).collect();
    let mut staged_host = if device == Device::Cpu { empty_tensors(file, &staged_entries)? } else { Vec::new() };
    targets.extend(host_targets(&staged_entries, &mut staged_host));
    if let Some(host) = &mut opt_host {
        targets.extend(host_targets(&opt_entries, host));
    }
    file.read_many_into(&mut targets)?;
    drop(targets);
    let staged_tensors = if device == Device::Cpu {
        staged_host
    } else {
        staged_entries
            .iter()
            .map(|e| read_tensor(file, e)?.f_to_device(device).map_err(torch))
            .collect::<Result<_, _>>()?
    };
    for (r, t) in staged.iter().zip(&staged_tensors) {
        var(r).f_copy_(t).map_err(torch)?;
    }

    let mut state = OptimizerState::new();
    match opt_host {
        // Read above, with the weights.
        Some(host) => state.extend(opt_entries.iter().zip(host).map(|(e, t)| (slot_key(e), t))),
        None => {
            for e in &opt_entries {
                state.insert(slot_key(e), read_tensor(file, e)?.f_to_device(device).map_err(torch)?);
            }
        }
    }
    let outcome = LoadOutcome {
        weights: plan.weights.len(),
        optimizer_tensors: state.len(),
        optimizer_restored: false,
        missing: plan.missing,
        unexpected: plan.unexpected,
    };
    Ok((outcome, state))
}

/// Reads the optimiser state of `file` for sharded state: of each slot of a parameter this
/// rank holds a piece of (`pieces`), only the piece's elements (a range of the file's whole
/// tensor, or of a sharded checkpoint's pieces, see [`CheckpointFile::read_range_into`]),
/// as a 1-D tensor on `device`; a parameter's `step`, whole. Slots of other parameters are
/// not read. A slot whose whole shape is not its parameter's is refused, naming it.
pub fn read_optimizer_pieces(
    file: &CheckpointFile,
    pieces: &[ShardPiece],
    device: Device,
) -> Result<OptimizerState, CheckpointError> {
    let path = file.path().to_path_buf();
    let torch = |source| CheckpointError::Torch { path: path.clone(), source };
    let by_name: HashMap<&str, &ShardPiece> = pieces.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut state = OptimizerState::new();
    for e in file.entries().iter().filter(|e| e.role == train_ckpt::Role::Optimizer) {
        let key = slot_key(e);
        let Some((param, slot)) = key.rsplit_once('/') else { continue };
        let Some(piece) = by_name.get(param) else { continue };
        let t = if slot == "step" {
            read_tensor(file, e)?
        } else {
            if e.shape != piece.shape {
                return Err(CheckpointError::Mismatch {
                    path: path.clone(),
                    tensor: e.name.clone(),
                    found: format!("{:?}", e.shape),
                    expected: format!("{:?}, its parameter's shape", piece.shape),
                });
            }
            let kind = crate::dtype::to_kind(e.dtype).ok_or_else(|| CheckpointError::Mismatch {
                path: path.clone(),
                tensor: e.name.clone(),
                found: format!("{:?}", e.dtype),
                expected: "a dtype libtorch has".into(),
            })?;
            let size = kind.elt_size_in_bytes() as u64;
            let mut t = Tensor::empty([piece.len as i64], (kind, Device::Cpu));
            file.read_range_into(&e.name, piece.offset * size, bytes_of(&mut t, piece.len * size))?;
            t
        };
        state.insert(key, t.f_to_device(device).map_err(torch)?);
    }
    Ok(state)
}

/// The slot key of an optimiser-state entry.
fn slot_key(e: &train_ckpt::Entry) -> String {
    optimizer_key(&e.name).expect("the plan chose optimizer entries").to_string()
}

/// The memory of `var`, a contiguous host tensor of `len` bytes, as a read target.
fn bytes_of(var: &mut Tensor, len: u64) -> &mut [u8] {
    // SAFETY: the plan reads in place only into contiguous host tensors whose shape and
    // dtype it matched to the entry, so `var` spans exactly `len` bytes; gradients are off
    // and nothing else reads it during the load; tensors sharing memory are read one at a
    // time (`How::InPlaceAlone`), never as two targets of one read.
    unsafe { std::slice::from_raw_parts_mut(var.data_ptr() as *mut u8, len as usize) }
}

/// Why a planned load did not complete.
#[derive(Debug)]
pub enum Unloaded {
    /// Out of memory with the cheapest strategy too: the last error.
    OutOfMemory(CheckpointError),
    /// Any other failure, which a cheaper strategy would not mend.
    Failed(CheckpointError),
}

/// Loads `file` with the strategy the plan layer chooses for it (`memory:` settings `cfg`,
/// onto `device`, where a model of `model_bytes` already sits), stepping down to the next
/// cheaper strategy on each out-of-memory error. `attempt` is one try with a strategy;
/// returns its value and the strategy that succeeded.
pub fn with_plan<T>(
    cfg: &MemoryConfig,
    device: Device,
    model_bytes: u64,
    file: &CheckpointFile,
    mut attempt: impl FnMut(Strategy) -> Result<T, CheckpointError>,
) -> Result<(T, Strategy), Unloaded> {
    // The model is on the device already: counted in the peaks, and given back to the budget.
    let sizes = Sizes::of_file(file, Some(model_bytes));
    let plan = load_plan::make(cfg, device, sizes, model_bytes, &crate::memory::probe::Nvml);
    tracing::info!(
        strategy = plan.strategy.name(),
        source = %plan.source,
        free_bytes = ?plan.free_vram_bytes,
        reason = %plan.reason,
        "loading plan"
    );
    let mut strategy = plan.strategy;
    loop {
        match attempt(strategy) {
            Err(e) if is_out_of_memory(&e) => {
                crate::memory::cuda::empty_cache();
                let Some(next) = strategy.cheaper() else { return Err(Unloaded::OutOfMemory(e)) };
                tracing::warn!(
                    "out of memory loading {} with {}; stepping down to {}",
                    file.path().display(),
                    strategy.name(),
                    next.name()
                );
                strategy = next;
            }
            other => {
                // Return what staging left cached in the allocator (torch.cuda.empty_cache()).
                crate::memory::cuda::empty_cache();
                return other.map(|value| (value, strategy)).map_err(Unloaded::Failed);
            }
        }
    }
}

/// Whether a load failed because the device ran out of memory (the case a cheaper
/// strategy may fix).
pub fn is_out_of_memory(e: &CheckpointError) -> bool {
    match e {
        CheckpointError::Torch { source, .. } => crate::fault::is_oom_message(&source.to_string()),
        _ => false,
    }
}

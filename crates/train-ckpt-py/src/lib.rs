//! `train_ckpt._native`: the Rust half of the `train_ckpt` Python package. It opens, reads,
//! verifies and writes checkpoint files through the `train-ckpt` crate (the one reader of
//! every checkpoint kind, and the writer `train` uses), and never links libtorch: tensors are
//! allocated by the package's Python half with whatever `torch` the user has, and their
//! memory is handed here as an address and a byte length, which the reader decodes into
//! directly (no intermediate copy of the tensor).
//!
//! Only the package's Python half calls this module; it passes addresses of contiguous CPU
//! tensors it has just made (or holds) and keeps them alive for the call. Every size is
//! checked against the file's entry before a byte is written.
//!
//! No call unwinds into the interpreter: errors become Python exceptions
//! (`FileNotFoundError`, `OSError`, `ValueError`), and a panic, should one happen, becomes
//! a `RuntimeError` ([`guarded`]).
#![warn(missing_docs)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use safetensors::tensor::{Dtype, View};
use train_ckpt::strategy::{self, Constraints, Sizes, Strategy, StrategyChoice};
use train_ckpt::{write, CheckpointFile, EncodeError, Error, Integrity, Meta, Role, Verification};

/// A Python exception for a checkpoint error: the file system's refusals as `OSError`
/// (`FileNotFoundError` for a missing file), everything about the bytes as `ValueError`.
/// The message is the crate's, which names the file and, where one is at fault, the tensor.
fn to_py(e: Error) -> PyErr {
    let message = e.to_string();
    match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(message)
        }
        Error::Io { .. } | Error::Encode { source: EncodeError::Io(_), .. } => PyOSError::new_err(message),
        _ => PyValueError::new_err(message),
    }
}

/// Runs `f`, turning a panic into a `RuntimeError` so that no input can take the interpreter
/// down with it (a panic is a bug here; the message says so).
fn guarded<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(PyRuntimeError::new_err(format!("internal error in train_ckpt (please report it): {what}")))
    })
}

/// The mutable bytes at `address`, `len` of them (an empty slice for `len` 0, whose address
/// may be null).
///
/// # Safety
/// `address` must point to `len` writable bytes that nothing else touches for `'a`.
unsafe fn bytes_mut<'a>(address: usize, len: usize) -> &'a mut [u8] {
    if len == 0 {
        return &mut [];
    }
    std::slice::from_raw_parts_mut(address as *mut u8, len)
}

/// The bytes at `address`, `len` of them (see [`bytes_mut`]).
///
/// # Safety
/// `address` must point to `len` readable bytes that nothing writes for `'a`.
unsafe fn bytes<'a>(address: usize, len: usize) -> &'a [u8] {
    if len == 0 {
        return &[];
    }
    std::slice::from_raw_parts(address as *const u8, len)
}

/// A dtype from its safetensors name (`F32`, `BF16`, ...).
fn dtype_named(tensor: &str, name: &str) -> PyResult<Dtype> {
    serde_json::from_value(serde_json::Value::String(name.into()))
        .map_err(|_| PyValueError::new_err(format!("tensor `{tensor}`: unknown dtype `{name}`")))
}

/// An opened checkpoint file of any kind (ours plain or compressed, foreign safetensors, a
/// `torch.save` file read by the pickle reader, which executes no code).
#[pyclass(frozen, module = "train_ckpt._native")]
struct File {
    inner: CheckpointFile,
}

#[pymethods]
impl File {
    /// Opens `path`, reading and checking its header, metadata and checksums (not its tensors).
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        guarded(|| py.detach(|| CheckpointFile::open(&path)).map(|inner| File { inner }).map_err(to_py))
    }

    /// Every tensor as `(name, dtype, shape, bytes, role)`, in file order: the file's own
    /// tensors, then (a `torch.save` file) what it holds beside the model's weights, by dotted
    /// path. `role` is `model` (a parameter or buffer), `optimizer` (ours:
    /// `optimizer/<param>/<slot>`; a `torch.save` file's optimizer state dict) or `other`.
    fn entries(&self) -> Vec<(String, String, Vec<usize>, u64, &'static str)> {
        let all = self.inner.entries().iter().chain(self.inner.other_entries());
        all.map(|e| {
            let role = match e.role {
                Role::Model => "model",
                Role::Optimizer => "optimizer",
                Role::Other => "other",
            };
            (e.name.clone(), e.dtype.to_string(), e.shape.clone(), e.bytes, role)
        })
        .collect()
    }

    /// What the file records of the run, as `train` reads it: `epoch`, `step`, the losses and
    /// accuracy (NaN where unrecorded), `has_optimizer_state`, `optimizer` and `lr_scheduler`
    /// (JSON text), and `train` (whether `train` or this package wrote the file; a foreign
    /// file's figures are what it records, see `Meta::imported`).
    fn run_state(&self, py: Python<'_>) -> PyResult<Py<pyo3::types::PyDict>> {
        let m = self.inner.meta_or_imported();
        let d = pyo3::types::PyDict::new(py);
        d.set_item("epoch", m.epoch())?;
        d.set_item("step", m.step())?;
        d.set_item("batches_into_epoch", m.position.batches_into_epoch)?;
        d.set_item("train_loss", m.train_loss)?;
        d.set_item("val_loss", m.val_loss)?;
        d.set_item("val_accuracy", m.val_accuracy)?;
        d.set_item("has_optimizer_state", m.has_optimizer_state)?;
        d.set_item("optimizer", m.optimizer.to_string())?;
        d.set_item("lr_scheduler", m.lr_scheduler.to_string())?;
        d.set_item("train", self.inner.meta().is_some())?;
        Ok(d.unbind())
    }

    /// A `torch.save` file's optimizer param groups, as JSON text: a list of objects with
    /// `params` (indices) and every hyper-parameter the reader could represent (`lr`, `betas`,
    /// ..., values it could not as `"<python type>"`); `None` for a file without a PyTorch
    /// optimizer state dict (ours keep theirs in the `optimizer` metadata).
    fn pytorch_param_groups(&self, py: Python<'_>) -> PyResult<Option<String>> {
        guarded(|| {
            let Some(opt) = py.detach(|| self.inner.pytorch_optimizer()).map_err(to_py)? else {
                return Ok(None);
            };
            let groups: Vec<serde_json::Value> = opt
                .param_groups
                .iter()
                .map(|g| {
                    let mut o = serde_json::Map::new();
                    o.insert("params".into(), g.params.clone().into());
                    let numbers =
                        [("lr", g.lr), ("eps", g.eps), ("weight_decay", g.weight_decay), ("momentum", g.momentum)];
                    for (k, v) in numbers {
                        if let Some(v) = v {
                            o.insert(k.into(), v.into());
                        }
                    }
                    if let Some((b1, b2)) = g.betas {
                        o.insert("betas".into(), serde_json::json!([b1, b2]));
                    }
                    o.extend(g.other.iter().map(|(k, v)| (k.clone(), v.clone())));
                    serde_json::Value::Object(o)
                })
                .collect();
            Ok(Some(serde_json::Value::Array(groups).to_string()))
        })
    }

    /// How to load this file into a model of `model_bytes` (its parameters and buffers) on a
    /// device with `free_bytes` free (`None`: unknown), by the rule `train plan` uses
    /// (`train_ckpt::strategy::choose`): `(strategy, reason, {strategy: predicted peak bytes},
    /// {model, weights, optimizer, largest})`. `strategy` is `auto` or one of the three, and
    /// the two switches are the `memory:` section's; a strategy they rule out is a
    /// `ValueError` naming both.
    #[pyo3(signature = (model_bytes, free_bytes, margin, strategy, memory_efficient, load_optimizer_state))]
    #[allow(clippy::type_complexity)]
    fn choose(
        &self,
        model_bytes: u64,
        free_bytes: Option<u64>,
        margin: f64,
        strategy: &str,
        memory_efficient: bool,
        load_optimizer_state: bool,
    ) -> PyResult<(&'static str, String, HashMap<&'static str, u64>, HashMap<&'static str, u64>)> {
        let choice: StrategyChoice =
            serde_json::from_value(serde_json::Value::String(strategy.into())).map_err(|_| {
                PyValueError::new_err(format!(
                    "strategy `{strategy}` is none of auto, standard, memory_efficient, model_only"
                ))
            })?;
        if !(0.0..1.0).contains(&margin) {
            return Err(PyValueError::new_err(format!("safety_margin {margin} is not in [0, 1)")));
        }
        let c = Constraints { choice, memory_efficient, load_optimizer_state };
        c.check().map_err(|e| PyValueError::new_err(e.to_string()))?;
        let sizes = Sizes::of_file(&self.inner, Some(model_bytes));
        let d = strategy::choose(&sizes, free_bytes, margin, &c);
        let peaks = strategy::allowed(&c).into_iter().map(|s| (s.name(), sizes.peak(s))).collect();
        let figures = HashMap::from([
            ("model", sizes.model),
            ("weights", sizes.weights),
            ("optimizer", sizes.optimizer),
            ("largest", sizes.largest),
        ]);
        Ok((d.strategy.name(), d.reason, peaks, figures))
    }

    /// The file's metadata map (ours with its checksum keys; a foreign file's own; what a
    /// `torch.save` file records as numbers).
    fn metadata(&self) -> HashMap<String, String> {
        self.inner.metadata().clone()
    }

    /// The file's kind: `safetensors`, `compressed` or `pytorch`.
    fn kind(&self) -> String {
        serde_json::to_value(self.inner.kind()).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    }

    /// Decodes tensors straight into memory: `targets` is `(name, address, bytes)` for each,
    /// every `bytes` exactly the tensor's size (checked). Checksums are checked where the
    /// file has them; a compressed file decodes all of them in parallel. The GIL is released.
    fn read_into(&self, py: Python<'_>, targets: Vec<(String, usize, usize)>) -> PyResult<()> {
        guarded(|| {
            py.detach(|| {
                // SAFETY: the package's Python half passes the addresses of contiguous CPU
                // tensors of exactly these byte sizes, which it keeps alive for this call.
                let mut outs: Vec<(&str, &mut [u8])> =
                    targets.iter().map(|(name, at, len)| (name.as_str(), unsafe { bytes_mut(*at, *len) })).collect();
                self.inner.read_many_into(&mut outs)
            })
            .map_err(to_py)
        })
    }

    /// Reads every tensor and checks it where the file allows; returns `(tensors, integrity)`
    /// with integrity `checked`, `metadata_not_covered` (a format-version-1 file) or
    /// `not_checked` (a file without checksums).
    fn verify(&self, py: Python<'_>) -> PyResult<(usize, &'static str)> {
        guarded(|| py.detach(|| self.inner.verify()).map(verified).map_err(to_py))
    }

    /// [`File::verify`] of the tensors `names` only: what a loader checks before it touches
    /// a model, without reading the tensors it will not load (the GIL is released).
    fn verify_tensors(&self, py: Python<'_>, names: Vec<String>) -> PyResult<(usize, &'static str)> {
        guarded(|| {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            py.detach(|| self.inner.verify_tensors(&names)).map(verified).map_err(to_py)
        })
    }
}

/// A verification as Python sees it: tensors read, and the integrity's name.
fn verified(v: Verification) -> (usize, &'static str) {
    let integrity = match v.integrity {
        Integrity::Checked => "checked",
        Integrity::MetadataNotCovered => "metadata_not_covered",
        Integrity::NotChecked => "not_checked",
    };
    (v.tensors, integrity)
}

/// A tensor's bytes in caller memory, as the writer views them.
#[derive(Clone, Copy)]
struct Borrowed<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    data: &'a [u8],
}

impl View for Borrowed<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Metadata keys that `train`'s own metadata takes from the caller's, as numbers (they are
/// what `Meta::imported` reads); every other key of ours is refused.
const NUMERIC_KEYS: &[&str] = &["epoch", "step", "train_loss", "val_loss"];

/// The metadata map of a file written from Python: ours (format, version, position and
/// losses from `user`'s numeric keys, markers for the rest), then `user`'s own keys.
fn metadata_for(
    path: &Path,
    user: &HashMap<String, String>,
    has_optimizer_state: bool,
    run: &RunJson,
) -> PyResult<HashMap<String, String>> {
    let mut meta = Meta::imported(user);
    meta.has_optimizer_state = has_optimizer_state;
    let json = |what: &str, text: &Option<String>| -> PyResult<Option<serde_json::Value>> {
        text.as_deref()
            .map(|t| {
                serde_json::from_str(t).map_err(|e| {
                    PyValueError::new_err(format!("cannot write {}: the {what} description: {e}", path.display()))
                })
            })
            .transpose()
    };
    if let Some(optimizer) = json("optimizer", &run.optimizer)? {
        meta.optimizer = optimizer;
    }
    if let Some(scheduler) = json("lr_scheduler", &run.lr_scheduler)? {
        meta.lr_scheduler = scheduler;
    }
    meta.tool_version = format!("train_ckpt (Python) {}", env!("CARGO_PKG_VERSION"));
    let mut map = meta.to_map();
    for (k, v) in user {
        if NUMERIC_KEYS.contains(&k.as_str()) {
            let parses = match k.as_str() {
                "epoch" => v.parse::<u32>().is_ok(),
                "step" => v.parse::<u64>().is_ok(),
                _ => v.parse::<f64>().is_ok(),
            };
            if !parses {
                return Err(PyValueError::new_err(format!(
                    "cannot write {}: metadata `{k}` = `{v}` is not a number of its kind (epoch and step are \
                     whole numbers, the losses any number)",
                    path.display()
                )));
            }
        } else if map.contains_key(k) || k == "xxh3" || k == "metadata_xxh3" {
            return Err(PyValueError::new_err(format!(
                "cannot write {}: metadata key `{k}` is reserved for train's own metadata",
                path.display()
            )));
        } else {
            map.insert(k.clone(), v.clone());
        }
    }
    Ok(map)
}

/// The optimizer's and the schedule's descriptions a file records, as JSON text (`None`: the
/// markers of a file `train` did not write, `{"kind": "unknown"}`).
struct RunJson {
    optimizer: Option<String>,
    lr_scheduler: Option<String>,
}

/// Writes `tensors`, each `(name, dtype, shape, address, bytes)` of a contiguous CPU tensor,
/// to `path` atomically, compressed (.tckpt) or plain (safetensors with per-tensor checksums),
/// with `metadata` (see [`metadata_for`]) and the optimizer's and schedule's descriptions
/// (JSON text: `optimizer`'s `kind` is what `train --resume` matches against its configured
/// optimizer); returns the file's size. The GIL is released while encoding and writing.
#[pyfunction]
#[pyo3(signature = (path, tensors, metadata, compress, optimizer=None, lr_scheduler=None))]
fn save(
    py: Python<'_>,
    path: PathBuf,
    tensors: Vec<(String, String, Vec<usize>, usize, usize)>,
    metadata: HashMap<String, String>,
    compress: bool,
    optimizer: Option<String>,
    lr_scheduler: Option<String>,
) -> PyResult<u64> {
    guarded(|| {
        let mut views = Vec::with_capacity(tensors.len());
        for (name, dtype, shape, at, len) in &tensors {
            let dtype = dtype_named(name, dtype)?;
            let expected = shape.iter().product::<usize>() * dtype.bitsize() / 8;
            if expected != *len {
                return Err(PyValueError::new_err(format!(
                    "tensor `{name}`: {len} bytes given, its shape needs {expected}"
                )));
            }
            // SAFETY: the Python half passes contiguous CPU tensors it holds for this call.
            views.push((name.as_str(), Borrowed { dtype, shape, data: unsafe { bytes(*at, *len) } }));
        }
        let has_optimizer_state = views.iter().any(|(n, _)| Role::of(n) == Role::Optimizer);
        let map = metadata_for(&path, &metadata, has_optimizer_state, &RunJson { optimizer, lr_scheduler })?;
        py.detach(|| write::write_checkpoint(&path, &views, map, compress)).map_err(to_py)
    })
}

/// The host memory a CPU load may use, as `train` reads it: `(bytes or None, where from)`,
/// the smaller of `MemAvailable` and this process's memory cgroup's headroom.
#[pyfunction]
fn host_available() -> (Option<u64>, String) {
    let h = train_ckpt::host::host();
    let from = h.available_from();
    (h.available, from)
}

/// The module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<File>()?;
    m.add_function(wrap_pyfunction!(save, m)?)?;
    m.add_function(wrap_pyfunction!(host_available, m)?)?;
    m.add("DEFAULT_SAFETY_MARGIN", strategy::DEFAULT_SAFETY_MARGIN)?;
    m.add("STRATEGIES", Strategy::ALL.map(Strategy::name).to_vec())?;
    Ok(())
}

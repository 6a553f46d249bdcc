//! What a `torch.save` file holds beside a model's weights: the scalars a training script
//! records (`epoch`, `loss`, ... as Python numbers or 0-d tensors) and a PyTorch optimizer's
//! `state_dict()` (`state` keyed by parameter index, `param_groups`), read from the pickle
//! that [`super::CheckpointFile::open`] parses once.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use pytorch_reader::PickleValue;
use safetensors::tensor::Dtype;
use serde::Serialize;

use super::{CheckpointFile, Entry};
use crate::Error;

/// Top-level keys under which training scripts save an optimizer's `state_dict()`, tried in
/// order; a file whose root holds `state` and `param_groups` is a bare optimizer state dict.
pub(super) const OPTIMIZER_KEYS: &[&str] = &["optimizer_state_dict", "optimizer", "optim", "optimizer_state"];
/// Top-level scalars read into the metadata map (a Python number, or a tensor of one element).
pub(super) const SCALAR_KEYS: &[&str] = &["epoch", "step", "train_loss", "val_loss", "loss"];
/// The Python type name pytorch-reader gives a tensor inside the pickle tree.
const TENSOR_TYPE: &str = "torch.Tensor";

/// Where a file's optimizer state dict sits in its pickle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum OptimizerAt {
    /// The whole file is one (`torch.save(optimizer.state_dict())`).
    Root,
    /// Under this top-level key (`optimizer_state_dict`, ...).
    Key(String),
}

impl OptimizerAt {
    /// Finds the optimizer state dict in a file's root dict.
    pub(super) fn find(root: &HashMap<String, PickleValue>) -> Option<Self> {
        if is_optimizer_dict(root) {
            return Some(Self::Root);
        }
        OPTIMIZER_KEYS.iter().find_map(|k| match root.get(*k) {
            Some(PickleValue::Dict(d)) if is_optimizer_dict(d) => Some(Self::Key(k.to_string())),
            _ => None,
        })
    }

    /// The prefix of its tensors' dotted names (`optimizer_state_dict.`, or none).
    pub(super) fn prefix(&self) -> String {
        match self {
            Self::Root => String::new(),
            Self::Key(k) => format!("{k}."),
        }
    }

    /// How it is named to a reader.
    fn label(&self) -> String {
        match self {
            Self::Root => "the file's optimizer state dict".into(),
            Self::Key(k) => format!("`{k}`"),
        }
    }
}

fn is_optimizer_dict(d: &HashMap<String, PickleValue>) -> bool {
    matches!(d.get("state"), Some(PickleValue::Dict(_))) && matches!(d.get("param_groups"), Some(PickleValue::List(_)))
}

/// What a `torch.save` file's pickle holds beside the tensors' bytes.
pub(super) struct Pickle {
    /// The root dict, tensors shown as [`PickleValue::Unsupported`]`("torch.Tensor")`.
    pub(super) root: HashMap<String, PickleValue>,
    /// Where its optimizer state dict is, if it has one.
    pub(super) optimizer: Option<OptimizerAt>,
}

/// The value of a tensor of one element as `f64` (a 0-d `loss`, an Adam `step`), from its
/// little-endian bytes; `None` for any other element count or a byte count that does not fit.
pub(super) fn scalar_of(dtype: Dtype, bytes: &[u8]) -> Option<f64> {
    fn arr<const N: usize>(b: &[u8]) -> Option<[u8; N]> {
        b.try_into().ok()
    }
    Some(match dtype {
        Dtype::F64 => f64::from_le_bytes(arr(bytes)?),
        Dtype::F32 => f32::from_le_bytes(arr(bytes)?) as f64,
        Dtype::BF16 => f32::from_bits((u16::from_le_bytes(arr(bytes)?) as u32) << 16) as f64,
        Dtype::F16 => f16_to_f64(u16::from_le_bytes(arr(bytes)?)),
        Dtype::I64 => i64::from_le_bytes(arr(bytes)?) as f64,
        Dtype::I32 => i32::from_le_bytes(arr(bytes)?) as f64,
        Dtype::I16 => i16::from_le_bytes(arr(bytes)?) as f64,
        Dtype::I8 => i8::from_le_bytes(arr(bytes)?) as f64,
        Dtype::U64 => u64::from_le_bytes(arr(bytes)?) as f64,
        Dtype::U32 => u32::from_le_bytes(arr(bytes)?) as f64,
        Dtype::U16 => u16::from_le_bytes(arr(bytes)?) as f64,
        Dtype::U8 => u8::from_le_bytes(arr(bytes)?) as f64,
        Dtype::BOOL => f64::from(u8::from_le_bytes(arr(bytes)?)),
        _ => return None,
    })
}

/// An IEEE half-precision value.
fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits >> 15 == 1 { -1.0 } else { 1.0 };
    let exp = ((bits >> 10) & 0x1f) as i32;
    let frac = (bits & 0x3ff) as f64;
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        0x1f if frac == 0.0 => f64::INFINITY,
        0x1f => f64::NAN,
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// A Python number as `f64`; `None` for anything else (a tensor is resolved by the caller).
fn number(v: &PickleValue) -> Option<f64> {
    match v {
        PickleValue::Int(i) => Some(*i as f64),
        PickleValue::Float(f) => Some(*f),
        _ => None,
    }
}

/// A hyper-parameter or other non-tensor value as JSON: numbers, bools, strings, `None`
/// and lists of them (`betas`); a nested dict or an object the reader cannot represent is
/// named by its Python type (`"<torch.Tensor>"`).
fn to_json(v: &PickleValue) -> serde_json::Value {
    use serde_json::Value;
    match v {
        PickleValue::None => Value::Null,
        PickleValue::Bool(b) => Value::Bool(*b),
        PickleValue::Int(i) => Value::from(*i),
        PickleValue::Float(f) => {
            serde_json::Number::from_f64(*f).map_or_else(|| Value::String(f.to_string()), Value::Number)
        }
        PickleValue::String(s) => Value::String(s.clone()),
        PickleValue::List(items) => Value::Array(items.iter().map(to_json).collect()),
        PickleValue::Dict(_) => Value::String("<dict>".into()),
        PickleValue::Bytes(b) => Value::String(format!("<{} bytes>", b.len())),
        PickleValue::Unsupported(t) => Value::String(format!("<{t}>")),
    }
}

/// One of a PyTorch optimizer's `param_groups`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamGroup {
    /// The indices of its parameters (PyTorch's numbering: see [`PytorchOptimizer`]).
    pub params: Vec<usize>,
    /// Learning rate (`lr`), when the group records one as a number (or a 0-d tensor).
    pub lr: Option<f64>,
    /// Adam's `betas`.
    pub betas: Option<(f64, f64)>,
    /// Adam's `eps`.
    pub eps: Option<f64>,
    /// `weight_decay`.
    pub weight_decay: Option<f64>,
    /// SGD's (or RMSprop's) `momentum`.
    pub momentum: Option<f64>,
    /// Every other key of the group as read (`amsgrad`, `nesterov`, `dampening`,
    /// `maximize`, `initial_lr`, `decoupled_weight_decay`, ...): numbers, bools, strings,
    /// `null` and lists; a value the reader cannot represent as `"<python type>"`.
    pub other: BTreeMap<String, serde_json::Value>,
}

/// One parameter's optimizer state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamState {
    /// Its `step`, whether stored as an int, a float or a 0-d tensor (Adam, AdamW; `None`
    /// for SGD, which keeps none). Integral in every file PyTorch writes.
    pub step: Option<f64>,
    /// Its state tensors but `step`, by slot (`exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`,
    /// `momentum_buffer`, ...). Each entry's `name` is the tensor's dotted path in the file
    /// (`optimizer_state_dict.state.3.exp_avg`), which [`CheckpointFile::read_into`] reads.
    pub tensors: BTreeMap<String, Entry>,
    /// Any other non-tensor value the state holds, as JSON (see [`ParamGroup::other`]).
    pub other: BTreeMap<String, serde_json::Value>,
}

/// A PyTorch optimizer's `state_dict()` as a `torch.save` file holds it, read by
/// [`CheckpointFile::pytorch_optimizer`].
///
/// PyTorch numbers an optimizer's parameters 0, 1, ... over its `param_groups` in order,
/// each group's parameters in the order they were given; for the usual
/// `torch.optim.X(model.parameters(), ...)` that is the order of
/// `model.named_parameters()`. The file keys `state` by that number and does not record
/// the parameters' names: [`Self::assign`] ties them to a model's parameters and refuses
/// when they cannot be matched.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PytorchOptimizer {
    /// The file.
    pub path: PathBuf,
    /// Where in the file: the top-level key (`optimizer_state_dict`), or `None` when the
    /// file is a bare optimizer state dict (`torch.save(optimizer.state_dict())`).
    pub key: Option<String>,
    /// Its `param_groups`, in order.
    pub param_groups: Vec<ParamGroup>,
    /// Each parameter's state, by index. Parameters that have none (frozen, or never
    /// given a gradient) are absent.
    pub state: BTreeMap<usize, ParamState>,
}

/// One parameter of a model matched to a PyTorch optimizer's numbering by
/// [`PytorchOptimizer::assign`].
#[derive(Debug, Clone, PartialEq)]
pub struct Assigned<'a> {
    /// The model's parameter name, as given.
    pub name: &'a str,
    /// PyTorch's index of it.
    pub index: usize,
    /// The index of its param group.
    pub group: usize,
    /// Its state; `None` when the file holds none for it (it starts fresh).
    pub state: Option<&'a ParamState>,
}

impl PytorchOptimizer {
    /// How many parameters the param groups list.
    pub fn parameter_count(&self) -> usize {
        self.param_groups.iter().map(|g| g.params.len()).sum()
    }

    /// Ties PyTorch's parameter numbers to a model's parameters, given `(name, shape)` of
    /// each in the order the Python optimizer was given them: for
    /// `torch.optim.X(model.parameters())`, `named_parameters()` order (PyTorch's
    /// dotted names, buffers left out). Parameter `k` of the file is `params[k]`.
    ///
    /// Refuses ([`Error::OptimizerMismatch`], naming the file and the first conflict) when
    /// the counts differ, when the groups do not number the parameters 0, 1, ... in order
    /// (`state_dict()` always does), or when a state tensor other than a 0-d one does not
    /// have its parameter's shape (Adam's moments and SGD's momentum buffer always do).
    /// The shape check is what catches an optimizer built over param groups in another
    /// order than the one given; two orders that differ only between parameters of the
    /// same shape cannot be told apart, so a caller whose Python code built several groups
    /// must pass the parameters in that code's group order.
    pub fn assign<'a>(&'a self, params: &[(&'a str, &[usize])]) -> Result<Vec<Assigned<'a>>, Error> {
        let mismatch = |reason: String| Error::OptimizerMismatch { path: self.path.clone(), reason };
        let count = self.parameter_count();
        if count != params.len() {
            return Err(mismatch(format!(
                "its param_groups list {count} parameters, the model has {}: they cannot be matched by position",
                params.len()
            )));
        }
        let mut out = Vec::with_capacity(count);
        for (group, g) in self.param_groups.iter().enumerate() {
            for &index in &g.params {
                if index != out.len() {
                    return Err(mismatch(format!(
                        "param group {group} lists parameter {index} where {} was expected: the groups do not number \
                         the parameters in order, as torch's state_dict() does",
                        out.len()
                    )));
                }
                let (name, shape) = params[index];
                let state = self.state.get(&index);
                for (slot, e) in state.iter().flat_map(|s| &s.tensors) {
                    if !e.shape.is_empty() && e.shape != shape {
                        return Err(mismatch(format!(
                            "parameter {index}'s `{slot}` is {:?}, the model's parameter {index} (`{name}`) is {shape:?}: \
                             the optimizer's parameter order is not the one given",
                            e.shape
                        )));
                    }
                }
                out.push(Assigned { name, index, group, state });
            }
        }
        Ok(out)
    }
}

/// The JSON summary of an optimizer that [`crate::tools::inspect`] reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OptimizerSummary {
    /// Where the state is: `"train"` (ours, `optimizer/...` tensors), the top-level key of a
    /// `torch.save` file (`"optimizer_state_dict"`), or `"state_dict"` for a bare one.
    pub source: String,
    /// The optimizer: as recorded (ours), or for a PyTorch file as told by its state and
    /// param groups (`adam`, `adamw`, `sgd`); `null` when neither says.
    pub kind: Option<String>,
    /// Parameters the optimizer covers (a PyTorch file's param groups; `null` for ours).
    pub parameters: Option<usize>,
    /// Parameters with state.
    pub parameters_with_state: usize,
    /// Each state slot and how many parameters hold it (`exp_avg: 6`, `step: 6`).
    pub slots: BTreeMap<String, usize>,
    /// A PyTorch file's param groups: their parameter count and hyper-parameters.
    pub param_groups: Vec<serde_json::Value>,
}

impl OptimizerSummary {
    /// One line for `ckpt inspect`'s text form.
    pub fn describe(&self) -> String {
        let slots: Vec<String> = self.slots.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        let mut line = format!(
            "{} in {}: state for {}{} parameters ({})",
            self.kind.as_deref().unwrap_or("unknown optimizer"),
            self.source,
            self.parameters_with_state,
            self.parameters.map_or(String::new(), |n| format!(" of {n}")),
            if slots.is_empty() { "none".into() } else { slots.join(", ") }
        );
        for (i, g) in self.param_groups.iter().enumerate() {
            let hyper: Vec<String> = g
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| {
                    matches!(k.as_str(), "lr" | "betas" | "eps" | "weight_decay" | "momentum" | "nesterov")
                        && !v.is_null()
                })
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            line += &format!("; param_groups[{i}]: {} params {}", g["params"], hyper.join(" "));
        }
        line
    }
}

impl CheckpointFile {
    /// The optimizer state a `torch.save` file holds: under `optimizer_state_dict` (or
    /// `optimizer`, `optim`, `optimizer_state`) beside the model's weights, or the whole
    /// file for a bare `torch.save(optimizer.state_dict())` (open that with
    /// [`Self::open_pytorch_optimizer`]). `Ok(None)` for a file without one, and for every
    /// file that is not a `torch.save` file (ours keep theirs as `optimizer/...` tensors).
    ///
    /// The contract, for a caller that resumes training from a PyTorch checkpoint:
    /// - [`PytorchOptimizer::param_groups`]: each group's parameter indices and
    ///   hyper-parameters (`lr`, `betas`, `eps`, `weight_decay`, `momentum`, the rest in
    ///   `other`).
    /// - [`PytorchOptimizer::state`]: per parameter index, its `step` (an int, float or
    ///   0-d tensor in the file, read as a number) and its state tensors by slot
    ///   (`exp_avg`, `exp_avg_sq`, `momentum_buffer`, ...), each an [`Entry`] whose bytes
    ///   [`Self::read_into`] reads (little-endian, row-major, the entry's dtype and shape).
    /// - Indices are PyTorch's: parameters numbered over the param groups in order, which
    ///   for one group of `model.parameters()` is `named_parameters()` order.
    ///   [`PytorchOptimizer::assign`] matches them to a model's parameters and says when it
    ///   cannot.
    ///
    /// Reads the one-element tensors that hold `step` or a hyper-parameter; no other tensor
    /// data. Errors ([`Error::Malformed`]) name the file and the part of the state dict
    /// that is not what PyTorch writes.
    pub fn pytorch_optimizer(&self) -> Result<Option<PytorchOptimizer>, Error> {
        Ok(self.parse_optimizer(true)?.map(|(opt, _)| opt))
    }

    /// What [`crate::tools::inspect`] reports of the optimizer state, without reading tensor
    /// data: ours from the `optimizer/<param>/<slot>` tensors and the metadata, a PyTorch
    /// file's from its state dict. `None` when the file holds no optimizer state.
    pub fn optimizer_summary(&self) -> Result<Option<OptimizerSummary>, Error> {
        if let Some((opt, steps)) = self.parse_optimizer(false)? {
            let mut slots = BTreeMap::new();
            for s in opt.state.values() {
                for slot in s.tensors.keys().chain(s.other.keys()) {
                    *slots.entry(slot.clone()).or_insert(0) += 1;
                }
            }
            if steps > 0 {
                slots.insert("step".into(), steps);
            }
            let has = |k: &str| slots.contains_key(k);
            let decoupled =
                opt.param_groups.iter().any(|g| g.other.get("decoupled_weight_decay") == Some(&true.into()));
            let kind = if has("exp_avg") && has("exp_avg_sq") {
                Some(if decoupled { "adamw" } else { "adam" })
            } else if has("momentum_buffer") || opt.param_groups.iter().any(|g| g.other.contains_key("nesterov")) {
                Some("sgd")
            } else {
                None
            };
            let param_groups = opt
                .param_groups
                .iter()
                .map(|g| {
                    let mut v = serde_json::to_value(g).expect("a param group serializes");
                    let fields = v.as_object_mut().expect("a struct serializes to an object");
                    fields.insert("params".into(), g.params.len().into());
                    // A hyper-parameter the group does not have is left out, not `null`.
                    fields.retain(|_, v| !v.is_null());
                    if let Some(serde_json::Value::Object(other)) = fields.remove("other") {
                        fields.extend(other);
                    }
                    v
                })
                .collect();
            return Ok(Some(OptimizerSummary {
                source: opt.key.clone().unwrap_or_else(|| "state_dict".into()),
                kind: kind.map(str::to_string),
                parameters: Some(opt.parameter_count()),
                parameters_with_state: opt.state.len(),
                slots,
                param_groups,
            }));
        }
        let ours: Vec<&str> = self.entries.iter().filter_map(|e| crate::format::optimizer_key(&e.name)).collect();
        if ours.is_empty() {
            return Ok(None);
        }
        let mut slots = BTreeMap::new();
        let mut params = std::collections::BTreeSet::new();
        for name in ours {
            let (param, slot) = name.rsplit_once('/').unwrap_or((name, ""));
            params.insert(param);
            *slots.entry(slot.to_string()).or_insert(0) += 1;
        }
        let kind = self.meta().and_then(|m| m.optimizer.get("kind")).and_then(|k| k.as_str()).map(str::to_string);
        Ok(Some(OptimizerSummary {
            source: "train".into(),
            kind,
            parameters: None,
            parameters_with_state: params.len(),
            slots,
            param_groups: Vec::new(),
        }))
    }
}

impl CheckpointFile {
    /// The optimizer state dict of a `torch.save` file, and how many parameters have a
    /// `step`. With `read_scalars` false no tensor is read: a `step` or hyper-parameter held
    /// in a tensor reads as `None`.
    fn parse_optimizer(&self, read_scalars: bool) -> Result<Option<(PytorchOptimizer, usize)>, Error> {
        let Some(pickle) = &self.pickle else { return Ok(None) };
        let Some(at) = &pickle.optimizer else { return Ok(None) };
        let dict = match at {
            OptimizerAt::Root => &pickle.root,
            OptimizerAt::Key(k) => match pickle.root.get(k) {
                Some(PickleValue::Dict(d)) => d,
                _ => return Ok(None),
            },
        };
        let malformed = |reason: String| Error::Malformed {
            path: self.path.clone(),
            reason: format!("optimizer state ({}): {reason}", at.label()),
        };
        let prefix = at.prefix();
        // A Python number, or a tensor of one element at `path` (read only when asked).
        let scalar = |v: &PickleValue, path: &str| -> Result<Option<f64>, Error> {
            if let Some(n) = number(v) {
                return Ok(Some(n));
            }
            if !matches!(v, PickleValue::Unsupported(t) if t == TENSOR_TYPE) || !read_scalars {
                return Ok(None);
            }
            let e = self
                .other_entry(path)
                .ok_or_else(|| malformed(format!("`{path}` is a tensor the file does not hold")))?;
            let bytes = self.read(&e.name)?;
            scalar_of(e.dtype, &bytes).map(Some).ok_or_else(|| {
                malformed(format!("`{path}` is a {:?} tensor of shape {:?}, not one number", e.dtype, e.shape))
            })
        };

        let Some(PickleValue::List(groups)) = dict.get("param_groups") else {
            return Err(malformed("`param_groups` is not a list".into()));
        };
        let mut param_groups = Vec::with_capacity(groups.len());
        let mut group_of = BTreeMap::new();
        for (gi, g) in groups.iter().enumerate() {
            let PickleValue::Dict(g) = g else {
                return Err(malformed(format!("param_groups[{gi}] is not a dict")));
            };
            let Some(PickleValue::List(items)) = g.get("params") else {
                return Err(malformed(format!("param_groups[{gi}] has no `params` list")));
            };
            let mut params = Vec::with_capacity(items.len());
            for v in items {
                let index = match v {
                    PickleValue::Int(i) => usize::try_from(*i).ok(),
                    _ => None,
                }
                .ok_or_else(|| malformed(format!("param_groups[{gi}].params holds {v:?}, not a parameter index")))?;
                if let Some(other) = group_of.insert(index, gi) {
                    return Err(malformed(format!("parameter {index} is in param groups {other} and {gi}")));
                }
                params.push(index);
            }
            let mut group = ParamGroup {
                params,
                lr: None,
                betas: None,
                eps: None,
                weight_decay: None,
                momentum: None,
                other: BTreeMap::new(),
            };
            let mut keys: Vec<&String> = g.keys().filter(|k| *k != "params").collect();
            keys.sort();
            for k in keys {
                let v = &g[k];
                let path = format!("{prefix}param_groups.{gi}.{k}");
                let typed = match k.as_str() {
                    "lr" => &mut group.lr,
                    "eps" => &mut group.eps,
                    "weight_decay" => &mut group.weight_decay,
                    "momentum" => &mut group.momentum,
                    "betas" => {
                        if let PickleValue::List(b) = v {
                            if let [b1, b2] = b.as_slice() {
                                if let (Some(b1), Some(b2)) =
                                    (scalar(b1, &format!("{path}.0"))?, scalar(b2, &format!("{path}.1"))?)
                                {
                                    group.betas = Some((b1, b2));
                                    continue;
                                }
                            }
                        }
                        group.other.insert(k.clone(), to_json(v));
                        continue;
                    }
                    _ => {
                        group.other.insert(k.clone(), to_json(v));
                        continue;
                    }
                };
                match scalar(v, &path)? {
                    Some(n) => *typed = Some(n),
                    // Kept as read (a `None`, a tensor not read): nothing is lost.
                    None => {
                        group.other.insert(k.clone(), to_json(v));
                    }
                }
            }
            param_groups.push(group);
        }

        let Some(PickleValue::Dict(raw_state)) = dict.get("state") else {
            return Err(malformed("`state` is not a dict".into()));
        };
        let mut state = BTreeMap::new();
        let mut steps = 0;
        for (key, entries) in raw_state {
            let index: usize =
                key.parse().map_err(|_| malformed(format!("`state` is keyed by `{key}`, not a parameter index")))?;
            if !group_of.contains_key(&index) {
                return Err(malformed(format!("`state` holds parameter {index}, which no param group lists")));
            }
            let PickleValue::Dict(entries) = entries else {
                return Err(malformed(format!("state[{index}] is not a dict")));
            };
            let mut s = ParamState { step: None, tensors: BTreeMap::new(), other: BTreeMap::new() };
            for (slot, v) in entries {
                let path = format!("{prefix}state.{index}.{slot}");
                let is_tensor = matches!(v, PickleValue::Unsupported(t) if t == TENSOR_TYPE);
                if slot == "step" {
                    s.step = scalar(v, &path)?;
                    if s.step.is_none() && (read_scalars || !is_tensor) {
                        return Err(malformed(format!("state[{index}].step is {v:?}, not a number")));
                    }
                    steps += 1;
                } else if is_tensor {
                    let e = self
                        .other_entry(&path)
                        .ok_or_else(|| malformed(format!("`{path}` is a tensor the file does not hold")))?;
                    s.tensors.insert(slot.clone(), e.clone());
                } else {
                    s.other.insert(slot.clone(), to_json(v));
                }
            }
            state.insert(index, s);
        }
        let key = match at {
            OptimizerAt::Root => None,
            OptimizerAt::Key(k) => Some(k.clone()),
        };
        Ok(Some((PytorchOptimizer { path: self.path.clone(), key, param_groups, state }, steps)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_element_tensors_read_as_numbers_in_every_dtype() {
        assert_eq!(scalar_of(Dtype::F32, &0.25f32.to_le_bytes()), Some(0.25));
        assert_eq!(scalar_of(Dtype::F64, &(-1.5f64).to_le_bytes()), Some(-1.5));
        assert_eq!(scalar_of(Dtype::I64, &7i64.to_le_bytes()), Some(7.0));
        assert_eq!(scalar_of(Dtype::I32, &(-3i32).to_le_bytes()), Some(-3.0));
        assert_eq!(scalar_of(Dtype::U8, &[200]), Some(200.0));
        assert_eq!(scalar_of(Dtype::BOOL, &[1]), Some(1.0));
        // bfloat16 0.25 is f32 0.25's upper half; float16 0.125 is 0x3000, 65504 is 0x7bff.
        assert_eq!(scalar_of(Dtype::BF16, &((0.25f32.to_bits() >> 16) as u16).to_le_bytes()), Some(0.25));
        assert_eq!(scalar_of(Dtype::F16, &0x3000u16.to_le_bytes()), Some(0.125));
        assert_eq!(scalar_of(Dtype::F16, &0x7bffu16.to_le_bytes()), Some(65504.0));
        assert_eq!(scalar_of(Dtype::F16, &0xc000u16.to_le_bytes()), Some(-2.0));
        assert_eq!(scalar_of(Dtype::F16, &0x0001u16.to_le_bytes()), Some(2f64.powi(-24)));
        assert_eq!(scalar_of(Dtype::F16, &0x7c00u16.to_le_bytes()), Some(f64::INFINITY));
        assert!(scalar_of(Dtype::F16, &0x7e00u16.to_le_bytes()).unwrap().is_nan());
        // More than one element (or a torn one) is not a number.
        assert_eq!(scalar_of(Dtype::F32, &[0; 8]), None);
        assert_eq!(scalar_of(Dtype::F32, &[0; 3]), None);
        assert_eq!(scalar_of(Dtype::I64, &[]), None);
    }

    #[test]
    fn an_optimizer_state_dict_is_found_at_the_root_or_under_its_usual_keys() {
        let opt = || {
            PickleValue::Dict(HashMap::from([
                ("state".to_string(), PickleValue::Dict(HashMap::new())),
                ("param_groups".to_string(), PickleValue::List(Vec::new())),
            ]))
        };
        let PickleValue::Dict(bare) = opt() else { unreachable!() };
        assert_eq!(OptimizerAt::find(&bare), Some(OptimizerAt::Root));
        for key in OPTIMIZER_KEYS {
            let root = HashMap::from([(key.to_string(), opt()), ("epoch".to_string(), PickleValue::Int(1))]);
            assert_eq!(OptimizerAt::find(&root), Some(OptimizerAt::Key(key.to_string())));
            assert_eq!(OptimizerAt::Key(key.to_string()).prefix(), format!("{key}."));
        }
        // A dict that merely has a `state` key is not one.
        let root = HashMap::from([("optimizer".to_string(), PickleValue::Dict(HashMap::new()))]);
        assert_eq!(OptimizerAt::find(&root), None);
    }
}

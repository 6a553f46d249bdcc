//! A PyTorch optimizer's `state_dict()` as a `torch.save` file holds it (`state` keyed by
//! parameter index, `param_groups`): its types, how it is read from the pickle tree
//! ([`parse_state_dict`], pure but for the one-element tensors it asks its caller to read),
//! and how its indices are tied to a model's parameters ([`PytorchOptimizer::assign`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use pytorch_reader::PickleValue;
use serde::Serialize;

use super::entry::Entry;
use super::pickle::{number, scalar_of, to_json, OptimizerAt, TENSOR_TYPE};
use crate::error::Error;

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
    /// (`optimizer_state_dict.state.3.exp_avg`), which `CheckpointFile::read_into` reads.
    pub tensors: BTreeMap<String, Entry>,
    /// Any other non-tensor value the state holds, as JSON (see [`ParamGroup::other`]).
    pub other: BTreeMap<String, serde_json::Value>,
}

/// A PyTorch optimizer's `state_dict()` as a `torch.save` file holds it, read by
/// `CheckpointFile::pytorch_optimizer`.
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

/// Reads a PyTorch optimizer state dict (`dict`, found `at` in the file at `path`) from the
/// pickle tree: the deciding part of `CheckpointFile::pytorch_optimizer`, which carries out
/// the only I/O it asks for. `tensors` looks up a tensor beside the model's weights by its
/// dotted path; `read`, when given, reads one (a `step` or hyper-parameter held in a
/// one-element tensor); without it such values read as `None` and no tensor is read.
/// Returns the state dict and how many parameters have a `step`.
///
/// Errors ([`Error::Malformed`]) name the file and the part of the state dict that is not
/// what PyTorch writes; `read`'s own errors pass through.
pub(super) fn parse_state_dict<'a, 'e>(
    path: &'a Path,
    at: &'a OptimizerAt,
    dict: &HashMap<String, PickleValue>,
    tensors: impl Fn(&str) -> Option<&'e Entry>,
    read: Option<ReadTensor<'a>>,
) -> Result<(PytorchOptimizer, usize), Error> {
    let mut parser = StateDictParser { path, at, prefix: at.prefix(), tensors, read };
    let Some(PickleValue::List(groups)) = dict.get("param_groups") else {
        return Err(parser.malformed("`param_groups` is not a list".into()));
    };
    let mut param_groups = Vec::with_capacity(groups.len());
    let mut group_of = BTreeMap::new();
    for (gi, g) in groups.iter().enumerate() {
        param_groups.push(parser.param_group(gi, g, &mut group_of)?);
    }
    let Some(PickleValue::Dict(raw_state)) = dict.get("state") else {
        return Err(parser.malformed("`state` is not a dict".into()));
    };
    let mut state = BTreeMap::new();
    let mut steps = 0;
    for (key, entries) in raw_state {
        let index: usize =
            key.parse().map_err(|_| parser.malformed(format!("`state` is keyed by `{key}`, not a parameter index")))?;
        if !group_of.contains_key(&index) {
            return Err(parser.malformed(format!("`state` holds parameter {index}, which no param group lists")));
        }
        let s = parser.param_state(index, entries)?;
        steps += usize::from(s.1);
        state.insert(index, s.0);
    }
    Ok((PytorchOptimizer { path: path.to_path_buf(), key: at.key(), param_groups, state }, steps))
}

/// Reads a tensor's bytes, for [`parse_state_dict`]: the one I/O it asks for.
pub(super) type ReadTensor<'a> = &'a mut dyn FnMut(&Entry) -> Result<Vec<u8>, Error>;

/// What [`parse_state_dict`] reads with.
struct StateDictParser<'a, T> {
    path: &'a Path,
    at: &'a OptimizerAt,
    /// The dotted-path prefix of the state dict's tensors.
    prefix: String,
    tensors: T,
    read: Option<ReadTensor<'a>>,
}

impl<'e, T: Fn(&str) -> Option<&'e Entry>> StateDictParser<'_, T> {
    fn malformed(&self, reason: String) -> Error {
        Error::Malformed {
            path: self.path.to_path_buf(),
            reason: format!("optimizer state ({}): {reason}", self.at.label()),
        }
    }

    /// The tensor at dotted path `path`, which the file must hold.
    fn tensor(&self, path: &str) -> Result<&'e Entry, Error> {
        (self.tensors)(path).ok_or_else(|| self.malformed(format!("`{path}` is a tensor the file does not hold")))
    }

    /// A Python number, or a tensor of one element at `path` (read only when a reader was
    /// given).
    fn scalar(&mut self, v: &PickleValue, path: &str) -> Result<Option<f64>, Error> {
        if let Some(n) = number(v) {
            return Ok(Some(n));
        }
        if !matches!(v, PickleValue::Unsupported(t) if t == TENSOR_TYPE) || self.read.is_none() {
            return Ok(None);
        }
        let e = self.tensor(path)?;
        let bytes = (self.read.as_mut().expect("checked above"))(e)?;
        scalar_of(e.dtype, &bytes).map(Some).ok_or_else(|| {
            self.malformed(format!("`{path}` is a {:?} tensor of shape {:?}, not one number", e.dtype, e.shape))
        })
    }

    /// Param group `gi`; records which group lists each parameter in `group_of`.
    fn param_group(
        &mut self,
        gi: usize,
        g: &PickleValue,
        group_of: &mut BTreeMap<usize, usize>,
    ) -> Result<ParamGroup, Error> {
        let PickleValue::Dict(g) = g else {
            return Err(self.malformed(format!("param_groups[{gi}] is not a dict")));
        };
        let Some(PickleValue::List(items)) = g.get("params") else {
            return Err(self.malformed(format!("param_groups[{gi}] has no `params` list")));
        };
        let mut params = Vec::with_capacity(items.len());
        for v in items {
            let index = match v {
                PickleValue::Int(i) => usize::try_from(*i).ok(),
                _ => None,
            }
            .ok_or_else(|| self.malformed(format!("param_groups[{gi}].params holds {v:?}, not a parameter index")))?;
            if let Some(other) = group_of.insert(index, gi) {
                return Err(self.malformed(format!("parameter {index} is in param groups {other} and {gi}")));
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
            let path = format!("{}param_groups.{gi}.{k}", self.prefix);
            let typed = match k.as_str() {
                "lr" => &mut group.lr,
                "eps" => &mut group.eps,
                "weight_decay" => &mut group.weight_decay,
                "momentum" => &mut group.momentum,
                "betas" => {
                    match self.betas(v, &path)? {
                        Some(betas) => group.betas = Some(betas),
                        None => {
                            group.other.insert(k.clone(), to_json(v));
                        }
                    }
                    continue;
                }
                _ => {
                    group.other.insert(k.clone(), to_json(v));
                    continue;
                }
            };
            match self.scalar(v, &path)? {
                Some(n) => *typed = Some(n),
                // Kept as read (a `None`, a tensor not read): nothing is lost.
                None => {
                    group.other.insert(k.clone(), to_json(v));
                }
            }
        }
        Ok(group)
    }

    /// Adam's `betas` at `path`, when they are a pair of numbers.
    fn betas(&mut self, v: &PickleValue, path: &str) -> Result<Option<(f64, f64)>, Error> {
        let PickleValue::List(b) = v else { return Ok(None) };
        let [b1, b2] = b.as_slice() else { return Ok(None) };
        Ok(match (self.scalar(b1, &format!("{path}.0"))?, self.scalar(b2, &format!("{path}.1"))?) {
            (Some(b1), Some(b2)) => Some((b1, b2)),
            _ => None,
        })
    }

    /// Parameter `index`'s state, and whether it has a `step`.
    fn param_state(&mut self, index: usize, entries: &PickleValue) -> Result<(ParamState, bool), Error> {
        let PickleValue::Dict(entries) = entries else {
            return Err(self.malformed(format!("state[{index}] is not a dict")));
        };
        let mut s = ParamState { step: None, tensors: BTreeMap::new(), other: BTreeMap::new() };
        let mut has_step = false;
        for (slot, v) in entries {
            let path = format!("{}state.{index}.{slot}", self.prefix);
            let is_tensor = matches!(v, PickleValue::Unsupported(t) if t == TENSOR_TYPE);
            if slot == "step" {
                s.step = self.scalar(v, &path)?;
                if s.step.is_none() && (self.read.is_some() || !is_tensor) {
                    return Err(self.malformed(format!("state[{index}].step is {v:?}, not a number")));
                }
                has_step = true;
            } else if is_tensor {
                s.tensors.insert(slot.clone(), self.tensor(&path)?.clone());
            } else {
                s.other.insert(slot.clone(), to_json(v));
            }
        }
        Ok((s, has_step))
    }
}

#[cfg(test)]
mod tests {
    use safetensors::tensor::Dtype;

    use super::*;

    fn dict(pairs: Vec<(&str, PickleValue)>) -> PickleValue {
        PickleValue::Dict(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    fn tensor() -> PickleValue {
        PickleValue::Unsupported(TENSOR_TYPE.into())
    }

    /// Adam's state dict under `optimizer_state_dict`: one group of two parameters, `lr` a
    /// number and `betas`' second a 0-d tensor; parameter 0 with a tensor `step` and moment.
    fn adam() -> HashMap<String, PickleValue> {
        let group = dict(vec![
            ("params", PickleValue::List(vec![PickleValue::Int(0), PickleValue::Int(1)])),
            ("lr", PickleValue::Float(0.01)),
            ("betas", PickleValue::List(vec![PickleValue::Float(0.9), tensor()])),
            ("amsgrad", PickleValue::Bool(false)),
        ]);
        let state = dict(vec![("0", dict(vec![("step", tensor()), ("exp_avg", tensor())]))]);
        let PickleValue::Dict(d) = dict(vec![("param_groups", PickleValue::List(vec![group])), ("state", state)])
        else {
            unreachable!()
        };
        d
    }

    fn entries() -> HashMap<String, Entry> {
        let at = |name: &str, dtype: Dtype, shape: Vec<usize>, bytes| {
            (name.to_string(), Entry::new(name.into(), dtype, shape, bytes, 0))
        };
        HashMap::from([
            at("optimizer_state_dict.param_groups.0.betas.1", Dtype::F32, vec![], 4),
            at("optimizer_state_dict.state.0.step", Dtype::F32, vec![], 4),
            at("optimizer_state_dict.state.0.exp_avg", Dtype::F32, vec![2, 3], 24),
        ])
    }

    #[test]
    fn a_state_dict_reads_its_one_element_tensors_only_when_asked() {
        let (at, entries) = (OptimizerAt::Key("optimizer_state_dict".into()), entries());
        let path = Path::new("adam.pt");
        let mut asked = Vec::new();
        let mut read = |e: &Entry| {
            asked.push(e.name.clone());
            Ok(if e.name.ends_with("betas.1") { 0.999f32 } else { 7.0f32 }.to_le_bytes().to_vec())
        };
        let (opt, steps) = parse_state_dict(path, &at, &adam(), |p| entries.get(p), Some(&mut read)).unwrap();
        assert_eq!(asked, ["optimizer_state_dict.param_groups.0.betas.1", "optimizer_state_dict.state.0.step"]);
        assert_eq!((opt.key.as_deref(), steps, opt.parameter_count()), (Some("optimizer_state_dict"), 1, 2));
        let g = &opt.param_groups[0];
        assert_eq!((g.lr, g.betas.map(|(a, b)| (a, b as f32))), (Some(0.01), Some((0.9, 0.999))));
        assert_eq!(g.other["amsgrad"], serde_json::Value::Bool(false));
        assert_eq!(opt.state[&0].step, Some(7.0));
        assert_eq!(opt.state[&0].tensors["exp_avg"].shape, [2, 3]);

        // Without a reader nothing is read: `step` is unknown, the betas kept as they are.
        let (opt, steps) = parse_state_dict(path, &at, &adam(), |p| entries.get(p), None).unwrap();
        assert_eq!((opt.state[&0].step, steps, opt.param_groups[0].betas), (None, 1, None));
        assert_eq!(opt.param_groups[0].other["betas"], serde_json::json!([0.9, "<torch.Tensor>"]));
    }

    #[test]
    fn a_state_dict_that_pytorch_would_not_write_is_refused_naming_the_part() {
        let at = OptimizerAt::Root;
        let entries = entries();
        let refuse = |d: &HashMap<String, PickleValue>| {
            parse_state_dict(Path::new("x.pt"), &at, d, |p| entries.get(p), None).unwrap_err().to_string()
        };
        let mut twice = adam();
        let PickleValue::List(groups) = twice.get_mut("param_groups").unwrap() else { unreachable!() };
        groups.push(groups[0].clone());
        assert!(refuse(&twice).contains("parameter 0 is in param groups 0 and 1"), "{}", refuse(&twice));
        let mut unlisted = adam();
        unlisted.insert("state".into(), dict(vec![("5", dict(vec![]))]));
        assert!(refuse(&unlisted).contains("`state` holds parameter 5, which no param group lists"));
        // Found at the root, its tensors have no prefix: the file holds none by those paths.
        assert!(refuse(&adam()).contains("`state.0.exp_avg` is a tensor the file does not hold"));
        assert!(refuse(&adam()).starts_with("checkpoint x.pt is not readable: optimizer state (the file's"));
    }
}

//! The tensor-level load plan: which of a file's tensors load into which model variable,
//! and how each is read (in place, through host memory, or staged), decided from the
//! file's header and the variables' layouts alone. `checkpoint::load` carries it out.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use tch::Kind;
use train_ckpt::{Entry, Role};

use crate::checkpoint::error::CheckpointError;
use crate::dtype::to_kind;
use train_ckpt::strategy::Strategy;

/// Prefixes that wrappers put before every name of a state dict: DistributedDataParallel's
/// `module.` and `torch.compile`'s `_orig_mod.`.
const WRAPPER_PREFIXES: &[&str] = &["module.", "_orig_mod."];

/// A model variable as the plan sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Var {
    /// Its element type.
    pub kind: Kind,
    /// Its dimensions.
    pub shape: Vec<i64>,
    /// Whether it is a contiguous host tensor, whose memory a read can fill directly.
    pub host_contiguous: bool,
    /// Where its memory starts (tensors that share memory cannot be read in parallel).
    pub address: usize,
}

/// How one tensor is read into its variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Straight into the variable's memory, in the one parallel read of the load.
    InPlace,
    /// Straight into the variable's memory, on its own: another variable shares its memory.
    InPlaceAlone,
    /// Into a new host tensor, then copied onto the variable (a device variable, or a
    /// non-contiguous one).
    ViaHost,
    /// Nothing to read: an empty tensor.
    Nothing,
    /// `standard`: every tensor read (onto the device) first, then all copied.
    Staged,
}

/// One file tensor and the variable it loads into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// Index of the entry in the file's entries.
    pub entry: usize,
    /// The variable, under the name the plan matched (with the wrapper prefix when one was
    /// found).
    pub var: String,
    /// How.
    pub how: How,
}

/// What a load reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reads {
    /// The wrapper prefix every name of the file carries, matched without it.
    pub prefix: Option<&'static str>,
    /// The model's variables the file lacks (non-strict loads only).
    pub missing: Vec<String>,
    /// The file's weights the model lacks (non-strict loads only).
    pub unexpected: Vec<String>,
    /// The weights that load, in file order.
    pub weights: Vec<Read>,
    /// Indices of the optimiser-state entries to read (none when not restoring).
    pub optimizer: Vec<usize>,
    /// Whether the optimiser's state is read in the same parallel read as the weights (on
    /// the CPU, where its host tensors are its state); otherwise one at a time after them.
    pub optimizer_with_weights: bool,
}

/// The wrapper prefix (`module.`, `_orig_mod.`) that every weight name in a file carries
/// and whose removal matches them to the model's names; `None` when names match as they
/// are, or no such prefix does.
pub fn wrapper_prefix(weights: &[&Entry], is_var: impl Fn(&str) -> bool) -> Option<&'static str> {
    if weights.iter().any(|e| is_var(&e.name)) {
        return None;
    }
    WRAPPER_PREFIXES
        .iter()
        .copied()
        .find(|p| weights.iter().all(|e| e.name.starts_with(p)) && weights.iter().any(|e| is_var(&e.name[p.len()..])))
}

/// What a load is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// How.
    pub strategy: Strategy,
    /// Every variable must be present and no other weight may be; otherwise the
    /// differences are listed.
    pub strict: bool,
    /// Read the optimiser's state too.
    pub with_optimizer: bool,
    /// The model is on the CPU.
    pub on_host: bool,
    /// The file is not a train checkpoint (a refusal then points at `--init-from`).
    pub weights_file: bool,
}

/// Plans a load of `entries` (the file's, named `path` in errors) into `vars` as `request`
/// asks. Shapes and dtypes must match, strict or not: every mismatch is found here, before
/// anything is read.
pub fn reads(
    path: &Path,
    entries: &[Entry],
    vars: &HashMap<String, Var>,
    request: Request,
) -> Result<Reads, CheckpointError> {
    let Request { strategy, strict, with_optimizer, on_host, weights_file } = request;
    let weights: Vec<&Entry> = entries.iter().filter(|e| e.role == Role::Model).collect();
    // A state dict saved from a DistributedDataParallel or torch.compile wrapper: every name
    // carries its prefix, which the model's names do not. Matched in the file's names.
    let prefix = wrapper_prefix(&weights, |n| vars.contains_key(n));
    let var = |file_name: &str| -> Option<(String, &Var)> {
        let name = match prefix {
            Some(p) => file_name.strip_prefix(p)?,
            None => file_name,
        };
        vars.get(name).map(|v| (name.to_string(), v))
    };
    let in_file: HashSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let mut missing: Vec<String> =
        vars.keys().map(|n| format!("{}{n}", prefix.unwrap_or(""))).filter(|n| !in_file.contains(n.as_str())).collect();
    let mut unexpected: Vec<String> =
        weights.iter().filter(|e| var(&e.name).is_none()).map(|e| e.name.clone()).collect();
    missing.sort();
    unexpected.sort();
    let hint = if weights_file {
        "; it is a weights file, not a train checkpoint: to start from the weights that match, use --init-from \
         instead of --resume (it loads what matches and reports the rest)"
    } else {
        ""
    };
    if strict {
        if let Some(tensor) = unexpected.first() {
            return Err(CheckpointError::UnexpectedTensor { path: path.into(), tensor: tensor.clone(), hint });
        }
        if let Some(tensor) = missing.first() {
            return Err(CheckpointError::MissingTensor { path: path.into(), tensor: tensor.clone(), hint });
        }
    }
    let present: Vec<(usize, String, &Var)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.role == Role::Model)
        .filter_map(|(i, e)| var(&e.name).map(|(name, v)| (i, name, v)))
        .collect();
    // Every weight is checked before any is touched, so a mismatch leaves the model as it was.
    for (i, _, v) in &present {
        let e = &entries[*i];
        let shape: Vec<i64> = e.shape.iter().map(|&d| d as i64).collect();
        if shape != v.shape || to_kind(e.dtype) != Some(v.kind) {
            return Err(CheckpointError::Mismatch {
                path: path.into(),
                tensor: e.name.clone(),
                expected: format!("{:?} {:?}", v.kind, v.shape),
                found: format!("{:?} {:?}", e.dtype, e.shape),
            });
        }
    }
    let mut starts: Vec<usize> = present
        .iter()
        .filter(|(i, _, v)| v.host_contiguous && entries[*i].bytes > 0)
        .map(|(_, _, v)| v.address)
        .collect();
    starts.sort_unstable();
    let distinct = starts.windows(2).all(|w| w[0] != w[1]);
    let how = |e: &Entry, v: &Var| match strategy {
        Strategy::Standard => How::Staged,
        Strategy::MemoryEfficient | Strategy::ModelOnly => match (v.host_contiguous, e.bytes > 0) {
            (true, true) if distinct => How::InPlace,
            (true, true) => How::InPlaceAlone,
            (true, false) => How::Nothing,
            (false, _) => How::ViaHost,
        },
    };
    let weights =
        present.iter().map(|(i, name, v)| Read { entry: *i, var: name.clone(), how: how(&entries[*i], v) }).collect();
    let optimizer = if with_optimizer {
        (0..entries.len()).filter(|&i| entries[i].role == Role::Optimizer).collect()
    } else {
        Vec::new()
    };
    Ok(Reads { prefix, missing, unexpected, weights, optimizer, optimizer_with_weights: with_optimizer && on_host })
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::Dtype;

    fn entry(name: &str, shape: &[usize]) -> Entry {
        Entry::described(name, Dtype::F32, shape)
    }

    /// A host variable of `shape` at its own address.
    fn var(shape: &[i64], address: usize) -> Var {
        Var { kind: Kind::Float, shape: shape.to_vec(), host_contiguous: true, address }
    }

    fn vars(list: &[(&str, Var)]) -> HashMap<String, Var> {
        list.iter().map(|(n, v)| (n.to_string(), v.clone())).collect()
    }

    fn request(strategy: Strategy) -> Request {
        Request { strategy, strict: true, with_optimizer: false, on_host: true, weights_file: false }
    }

    fn file() -> Vec<Entry> {
        vec![entry("fc.weight", &[4, 2]), entry("fc.bias", &[4]), entry("optimizer/fc.weight/exp_avg", &[4, 2])]
    }

    #[test]
    fn streaming_reads_host_variables_in_place_and_others_through_host_memory() {
        let mut device_bias = var(&[4], 2);
        device_bias.host_contiguous = false;
        let v = vars(&[("fc.weight", var(&[4, 2], 1)), ("fc.bias", device_bias)]);
        let plan = reads(Path::new("f"), &file(), &v, request(Strategy::MemoryEfficient)).unwrap();
        let how: Vec<(&str, How)> = plan.weights.iter().map(|r| (r.var.as_str(), r.how)).collect();
        assert_eq!(how, [("fc.weight", How::InPlace), ("fc.bias", How::ViaHost)]);
        assert!(plan.optimizer.is_empty() && !plan.optimizer_with_weights);
        assert_eq!(plan.prefix, None);
    }

    #[test]
    fn variables_sharing_memory_are_read_one_at_a_time_and_empty_ones_not_at_all() {
        let entries = vec![entry("a", &[2]), entry("b", &[2]), entry("empty", &[0])];
        let v = vars(&[("a", var(&[2], 7)), ("b", var(&[2], 7)), ("empty", var(&[0], 9))]);
        let plan = reads(Path::new("f"), &entries, &v, request(Strategy::ModelOnly)).unwrap();
        let how: Vec<How> = plan.weights.iter().map(|r| r.how).collect();
        assert_eq!(how, [How::InPlaceAlone, How::InPlaceAlone, How::Nothing]);
    }

    #[test]
    fn standard_stages_everything_and_optimizer_state_is_read_only_when_asked() {
        let v = vars(&[("fc.weight", var(&[4, 2], 1)), ("fc.bias", var(&[4], 2))]);
        let ask = Request { with_optimizer: true, ..request(Strategy::Standard) };
        let plan = reads(Path::new("f"), &file(), &v, ask).unwrap();
        assert!(plan.weights.iter().all(|r| r.how == How::Staged));
        assert_eq!(plan.optimizer, [2]);
        assert!(plan.optimizer_with_weights);
        let on_device = reads(Path::new("f"), &file(), &v, Request { on_host: false, ..ask }).unwrap();
        assert!(!on_device.optimizer_with_weights);
    }

    #[test]
    fn strict_loads_refuse_a_missing_or_extra_tensor_and_lenient_ones_list_them() {
        let v = vars(&[("fc.weight", var(&[4, 2], 1)), ("head.bias", var(&[4], 2))]);
        let err = reads(Path::new("f"), &file(), &v, request(Strategy::MemoryEfficient)).unwrap_err();
        assert!(matches!(&err, CheckpointError::UnexpectedTensor { tensor, .. } if tensor == "fc.bias"), "{err}");
        let lenient = Request { strict: false, ..request(Strategy::MemoryEfficient) };
        let plan = reads(Path::new("f"), &file(), &v, lenient).unwrap();
        assert_eq!((plan.missing, plan.unexpected), (vec!["head.bias".to_string()], vec!["fc.bias".to_string()]));
        assert_eq!(plan.weights.len(), 1);
        let weights_file = Request { weights_file: true, ..request(Strategy::MemoryEfficient) };
        let err = reads(Path::new("f"), &file(), &v, weights_file).unwrap_err();
        assert!(err.to_string().contains("--init-from"), "{err}");
    }

    #[test]
    fn a_shape_or_dtype_mismatch_is_refused_before_any_read_naming_the_tensor() {
        let v = vars(&[("fc.weight", var(&[2, 4], 1)), ("fc.bias", var(&[4], 2))]);
        let err = reads(Path::new("f"), &file(), &v, request(Strategy::MemoryEfficient)).unwrap_err();
        assert!(matches!(&err, CheckpointError::Mismatch { tensor, .. } if tensor == "fc.weight"), "{err}");
        let mut half = var(&[4], 2);
        half.kind = Kind::Half;
        let v = vars(&[("fc.weight", var(&[4, 2], 1)), ("fc.bias", half)]);
        let err = reads(Path::new("f"), &file(), &v, request(Strategy::MemoryEfficient)).unwrap_err();
        assert!(matches!(&err, CheckpointError::Mismatch { tensor, .. } if tensor == "fc.bias"), "{err}");
    }

    #[test]
    fn a_wrapper_prefix_on_every_name_is_matched_without_it() {
        for prefix in WRAPPER_PREFIXES {
            let entries = vec![entry(&format!("{prefix}fc.weight"), &[4, 2]), entry(&format!("{prefix}fc.bias"), &[4])];
            let v = vars(&[("fc.weight", var(&[4, 2], 1)), ("fc.bias", var(&[4], 2))]);
            let plan = reads(Path::new("f"), &entries, &v, request(Strategy::MemoryEfficient)).unwrap();
            assert_eq!(plan.prefix, Some(*prefix));
            assert_eq!(plan.weights.iter().map(|r| r.var.as_str()).collect::<Vec<_>>(), ["fc.weight", "fc.bias"]);
        }
        // Names that already match keep the file's names, prefix or not.
        let entries = [entry("module.fc.weight", &[4, 2])];
        assert_eq!(wrapper_prefix(&entries.iter().collect::<Vec<_>>(), |n| n == "module.fc.weight"), None);
    }
}

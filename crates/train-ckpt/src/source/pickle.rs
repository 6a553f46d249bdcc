//! What a `torch.save` file's pickle holds beside the tensors' bytes: the scalars a training
//! script records (`epoch`, `loss`, ... as Python numbers or 0-d tensors), where a PyTorch
//! optimizer's `state_dict()` sits, and Python values as numbers or JSON. Pure: the pickle is
//! parsed once when the file is opened.

use std::collections::HashMap;

use pytorch_reader::PickleValue;
use safetensors::tensor::Dtype;

/// Top-level keys under which training scripts save an optimizer's `state_dict()`, tried in
/// order; a file whose root holds `state` and `param_groups` is a bare optimizer state dict.
pub(super) const OPTIMIZER_KEYS: &[&str] = &["optimizer_state_dict", "optimizer", "optim", "optimizer_state"];
/// Top-level scalars read into the metadata map (a Python number, or a tensor of one element).
pub(super) const SCALAR_KEYS: &[&str] = &["epoch", "step", "train_loss", "val_loss", "loss"];
/// The Python type name pytorch-reader gives a tensor inside the pickle tree.
pub(super) const TENSOR_TYPE: &str = "torch.Tensor";

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

    /// The optimizer state dict in the file's root dict; `None` when it is not where this
    /// says (a root other than the one it was found in).
    pub(super) fn dict<'r>(&self, root: &'r HashMap<String, PickleValue>) -> Option<&'r HashMap<String, PickleValue>> {
        match self {
            Self::Root => Some(root),
            Self::Key(k) => match root.get(k) {
                Some(PickleValue::Dict(d)) => Some(d),
                _ => None,
            },
        }
    }

    /// The top-level key it is under; `None` for the whole file.
    pub(super) fn key(&self) -> Option<String> {
        match self {
            Self::Root => None,
            Self::Key(k) => Some(k.clone()),
        }
    }

    /// How it is named to a reader.
    pub(super) fn label(&self) -> String {
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
pub(super) fn number(v: &PickleValue) -> Option<f64> {
    match v {
        PickleValue::Int(i) => Some(*i as f64),
        PickleValue::Float(f) => Some(*f),
        _ => None,
    }
}

/// A hyper-parameter or other non-tensor value as JSON: numbers, bools, strings, `None`
/// and lists of them (`betas`); a nested dict or an object the reader cannot represent is
/// named by its Python type (`"<torch.Tensor>"`).
pub(super) fn to_json(v: &PickleValue) -> serde_json::Value {
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

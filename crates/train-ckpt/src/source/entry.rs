//! One tensor of a checkpoint, as every kind of file lists it.

use safetensors::tensor::Dtype;
use serde::Serialize;

use crate::names::Role;

/// One tensor of a checkpoint. Serializes as `{name, role, dtype, shape, bytes}`, the dtype
/// by its safetensors name (`F32`, `BF16`, `I64`, ...).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// What it is for, given by the reader from the name.
    pub role: Role,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Its size in bytes.
    pub bytes: u64,
    /// Offset of its bytes from the start of a plain file's data section (0 otherwise).
    #[serde(skip)]
    pub(super) begin: u64,
}

impl Entry {
    /// An entry whose role its name gives (see [`Role::of`]).
    pub(super) fn new(name: String, dtype: Dtype, shape: Vec<usize>, bytes: u64, begin: u64) -> Entry {
        Entry { role: Role::of(&name), name, dtype, shape, bytes, begin }
    }

    /// An entry as a file would list tensor `name` of `dtype` and `shape` (its size worked
    /// out, its role from its name), for plans made before, or without, a file.
    pub fn described(name: &str, dtype: Dtype, shape: &[usize]) -> Entry {
        let bits = shape.iter().product::<usize>() * dtype.bitsize();
        Entry::new(name.to_string(), dtype, shape.to_vec(), bits.div_ceil(8) as u64, 0)
    }
}

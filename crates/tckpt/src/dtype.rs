//! Element types, named as safetensors names them.

use serde::{Deserialize, Serialize};

/// The element type of a tensor. The JSON names are safetensors' (`"F32"`, `"BF16"`, ...), so a
/// safetensors header's dtype carries over unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Dtype {
    /// Boolean, one byte per element (0 or 1; other values are kept as they are).
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// IEEE 754 half precision.
    F16,
    /// bfloat16: the upper half of an IEEE 754 single.
    BF16,
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 double precision.
    F64,
}

impl Dtype {
    /// Every dtype, in the order of the format's table.
    pub const ALL: [Dtype; 10] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::I16,
        Dtype::I32,
        Dtype::I64,
        Dtype::F16,
        Dtype::BF16,
        Dtype::F32,
        Dtype::F64,
    ];

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 => 1,
            Dtype::I16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::F64 => 8,
        }
    }

    /// Whether the elements are IEEE-style floats (sign bit on top, exponent below it).
    pub const fn is_float(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_names_are_safetensors_names() {
        let names: Vec<String> = Dtype::ALL.iter().map(|d| serde_json::to_string(d).unwrap()).collect();
        assert_eq!(names.join(","), r#""BOOL","U8","I8","I16","I32","I64","F16","BF16","F32","F64""#);
    }

    #[test]
    fn sizes_match_the_spec() {
        let sizes: Vec<usize> = Dtype::ALL.iter().map(|d| d.size()).collect();
        assert_eq!(sizes, [1, 1, 1, 2, 4, 8, 2, 2, 4, 8]);
    }
}

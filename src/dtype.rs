//! libtorch's element kinds for the file dtypes checkpoints and data files name (the other
//! formats' names are mapped in `train_ckpt::dtype`). One table, [`TABLE`].

use safetensors::tensor::Dtype;
use tch::Kind;

/// The file dtypes libtorch has a kind for. The unsigned 16/32/64-bit ones have none.
const TABLE: &[(Dtype, Kind)] = &[
    (Dtype::BOOL, Kind::Bool),
    (Dtype::U8, Kind::Uint8),
    (Dtype::I8, Kind::Int8),
    (Dtype::I16, Kind::Int16),
    (Dtype::I32, Kind::Int),
    (Dtype::I64, Kind::Int64),
    (Dtype::F16, Kind::Half),
    (Dtype::BF16, Kind::BFloat16),
    (Dtype::F32, Kind::Float),
    (Dtype::F64, Kind::Double),
];

/// The libtorch kind of a file dtype.
pub fn to_kind(d: Dtype) -> Option<Kind> {
    TABLE.iter().find(|(t, _)| *t == d).map(|(_, k)| *k)
}

/// Whether a file dtype holds floating-point numbers (of the dtypes libtorch has a kind for).
pub fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

/// The file dtype of a libtorch kind.
pub fn from_kind(k: Kind) -> Option<Dtype> {
    TABLE.iter().find(|(_, t)| *t == k).map(|(d, _)| *d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_compressed_dtype_has_a_kind_and_back() {
        for c in tckpt::Dtype::ALL {
            let d = train_ckpt::dtype::from_compressed(c);
            assert_eq!(from_kind(to_kind(d).unwrap()), Some(d));
        }
    }
}

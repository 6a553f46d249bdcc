//! Element types across the libraries tensors pass through: safetensors (the file's
//! own names, which [`Dtype`] is), libtorch ([`Kind`]), the compressed format
//! ([`train_ckpt::Dtype`]) and PyTorch pickles ([`pytorch_reader::DType`]).
//!
//! One table, [`TABLE`], holds the mapping; every conversion reads it, so a dtype added in
//! one place is known everywhere or nowhere.

use safetensors::tensor::Dtype;
use tch::Kind;

/// A dtype's name in each library; `None` where that library has no such type.
struct Row {
    safetensors: Dtype,
    torch: Option<Kind>,
    compressed: Option<train_ckpt::Dtype>,
    pytorch: Option<pytorch_reader::DType>,
}

const fn row(
    safetensors: Dtype,
    torch: Option<Kind>,
    compressed: Option<train_ckpt::Dtype>,
    pytorch: Option<pytorch_reader::DType>,
) -> Row {
    Row { safetensors, torch, compressed, pytorch }
}

/// The mapping. The unsigned 16/32/64-bit types exist in safetensors and PyTorch files but
/// not in libtorch's stable kinds or the compressed format: they can be listed and converted
/// between safetensors files, never loaded into a model.
const TABLE: &[Row] = {
    use pytorch_reader::DType as P;
    use train_ckpt::Dtype as C;
    &[
        row(Dtype::BOOL, Some(Kind::Bool), Some(C::Bool), Some(P::Bool)),
        row(Dtype::U8, Some(Kind::Uint8), Some(C::U8), Some(P::U8)),
        row(Dtype::I8, Some(Kind::Int8), Some(C::I8), Some(P::I8)),
        row(Dtype::I16, Some(Kind::Int16), Some(C::I16), Some(P::I16)),
        row(Dtype::I32, Some(Kind::Int), Some(C::I32), Some(P::I32)),
        row(Dtype::I64, Some(Kind::Int64), Some(C::I64), Some(P::I64)),
        row(Dtype::F16, Some(Kind::Half), Some(C::F16), Some(P::F16)),
        row(Dtype::BF16, Some(Kind::BFloat16), Some(C::BF16), Some(P::BF16)),
        row(Dtype::F32, Some(Kind::Float), Some(C::F32), Some(P::F32)),
        row(Dtype::F64, Some(Kind::Double), Some(C::F64), Some(P::F64)),
        row(Dtype::U16, None, None, Some(P::U16)),
        row(Dtype::U32, None, None, Some(P::U32)),
        row(Dtype::U64, None, None, Some(P::U64)),
    ]
};

/// The libtorch kind of a file dtype.
pub fn to_kind(d: Dtype) -> Option<Kind> {
    TABLE.iter().find(|r| r.safetensors == d).and_then(|r| r.torch)
}

/// The file dtype of a libtorch kind.
pub fn from_kind(k: Kind) -> Option<Dtype> {
    TABLE.iter().find(|r| r.torch == Some(k)).map(|r| r.safetensors)
}

/// The compressed format's name of a file dtype.
pub fn to_compressed(d: Dtype) -> Option<train_ckpt::Dtype> {
    TABLE.iter().find(|r| r.safetensors == d).and_then(|r| r.compressed)
}

/// The file dtype of a compressed-format dtype (every one has a row).
pub fn from_compressed(d: train_ckpt::Dtype) -> Dtype {
    TABLE.iter().find(|r| r.compressed == Some(d)).map(|r| r.safetensors).expect("every compressed dtype has a row")
}

/// The file dtype of a PyTorch pickle's dtype.
pub fn from_pytorch(d: pytorch_reader::DType) -> Option<Dtype> {
    TABLE.iter().find(|r| r.pytorch == Some(d)).map(|r| r.safetensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_compressed_dtype_round_trips_through_the_table() {
        for c in train_ckpt::Dtype::ALL {
            let d = from_compressed(c);
            assert_eq!(to_compressed(d), Some(c));
            assert_eq!(from_kind(to_kind(d).unwrap()), Some(d));
        }
    }

    #[test]
    fn the_table_has_one_row_per_dtype() {
        for (i, a) in TABLE.iter().enumerate() {
            for b in &TABLE[i + 1..] {
                assert_ne!(a.safetensors, b.safetensors);
                assert!(a.torch.is_none() || a.torch != b.torch);
                assert!(a.compressed.is_none() || a.compressed != b.compressed);
                assert!(a.pytorch.is_none() || a.pytorch != b.pytorch);
            }
        }
    }
}

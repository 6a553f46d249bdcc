//! Element types across the file formats a checkpoint passes through: safetensors (the
//! file's own names, which [`Dtype`] is), the compressed format ([`tckpt::Dtype`]) and
//! PyTorch pickles ([`pytorch_reader::DType`]). libtorch's kinds are mapped in the `train`
//! crate, which links libtorch; this crate does not.
//!
//! One table, [`TABLE`], holds the mapping; every conversion reads it.

use safetensors::tensor::Dtype;

/// A dtype's name in each format; `None` where that format has no such type.
struct Row {
    safetensors: Dtype,
    compressed: Option<tckpt::Dtype>,
    pytorch: Option<pytorch_reader::DType>,
}

const fn row(safetensors: Dtype, compressed: Option<tckpt::Dtype>, pytorch: Option<pytorch_reader::DType>) -> Row {
    Row { safetensors, compressed, pytorch }
}

/// The mapping. The unsigned 16/32/64-bit types exist in safetensors and PyTorch files but
/// not in the compressed format (nor in libtorch's stable kinds): they can be listed and
/// converted between safetensors files, never loaded into a model.
const TABLE: &[Row] = {
    use pytorch_reader::DType as P;
    use tckpt::Dtype as C;
    &[
        row(Dtype::BOOL, Some(C::Bool), Some(P::Bool)),
        row(Dtype::U8, Some(C::U8), Some(P::U8)),
        row(Dtype::I8, Some(C::I8), Some(P::I8)),
        row(Dtype::I16, Some(C::I16), Some(P::I16)),
        row(Dtype::I32, Some(C::I32), Some(P::I32)),
        row(Dtype::I64, Some(C::I64), Some(P::I64)),
        row(Dtype::F16, Some(C::F16), Some(P::F16)),
        row(Dtype::BF16, Some(C::BF16), Some(P::BF16)),
        row(Dtype::F32, Some(C::F32), Some(P::F32)),
        row(Dtype::F64, Some(C::F64), Some(P::F64)),
        row(Dtype::U16, None, Some(P::U16)),
        row(Dtype::U32, None, Some(P::U32)),
        row(Dtype::U64, None, Some(P::U64)),
    ]
};

/// The compressed format's name of a file dtype.
pub fn to_compressed(d: Dtype) -> Option<tckpt::Dtype> {
    TABLE.iter().find(|r| r.safetensors == d).and_then(|r| r.compressed)
}

/// The file dtype of a compressed-format dtype (every one has a row).
pub fn from_compressed(d: tckpt::Dtype) -> Dtype {
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
        for c in tckpt::Dtype::ALL {
            assert_eq!(to_compressed(from_compressed(c)), Some(c));
        }
    }

    #[test]
    fn the_table_has_one_row_per_dtype() {
        for (i, a) in TABLE.iter().enumerate() {
            for b in &TABLE[i + 1..] {
                assert_ne!(a.safetensors, b.safetensors);
                assert!(a.compressed.is_none() || a.compressed != b.compressed);
                assert!(a.pytorch.is_none() || a.pytorch != b.pytorch);
            }
        }
    }
}

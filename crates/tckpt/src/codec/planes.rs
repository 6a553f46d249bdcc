//! Byte planes: whole elements split into one stream per byte of the element, after a
//! one-bit rotation for floats (the transposition itself is [`crate::shuffle`]'s).

use crate::dtype::Dtype;
use crate::layout::Encoding;

/// Splits whole elements into planes: plane k gets byte k (little-endian) of each element,
/// after a one-bit left rotation for `FloatPlanes`.
pub(super) fn split(encoding: Encoding, dtype: Dtype, data: &[u8], planes: &mut Vec<Vec<u8>>) {
    let n = data.len() / dtype.size();
    planes.resize_with(dtype.size(), Vec::new);
    for p in planes.iter_mut() {
        p.clear();
        p.resize(n, 0);
    }
    let mut outs: Vec<&mut [u8]> = planes.iter_mut().map(Vec::as_mut_slice).collect();
    crate::shuffle::split(data, encoding == Encoding::FloatPlanes, &mut outs);
}

/// Inverse of [`split`]: writes whole elements to `out` from the planes.
pub(super) fn merge(encoding: Encoding, dtype: Dtype, planes: &[&[u8]], out: &mut [u8]) {
    debug_assert_eq!(planes.len(), dtype.size());
    crate::shuffle::merge(planes, encoding == Encoding::FloatPlanes, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_planes_put_the_exponent_on_top() {
        // 1.0f32 = 0x3F80_0000: exponent 127, rotated left: 0x7F00_0000.
        let mut planes = Vec::new();
        split(Encoding::FloatPlanes, Dtype::F32, &1.0f32.to_le_bytes(), &mut planes);
        assert_eq!(planes, [[0x00], [0x00], [0x00], [0x7F]]);
        // -2.0 = 0xC000_0000: exponent 128, sign to the bottom bit.
        split(Encoding::FloatPlanes, Dtype::F32, &(-2.0f32).to_le_bytes(), &mut planes);
        assert_eq!(planes, [[0x01], [0x00], [0x00], [0x80]]);
    }

    #[test]
    fn split_then_merge_is_identity_for_every_width() {
        let data: Vec<u8> = (0..64u32).map(|i| (i * 37 + 11) as u8).collect();
        for dtype in [Dtype::I16, Dtype::BF16, Dtype::F32, Dtype::I64, Dtype::F64] {
            for encoding in [Encoding::Planes, Encoding::FloatPlanes] {
                let mut planes = Vec::new();
                split(encoding, dtype, &data, &mut planes);
                let views: Vec<&[u8]> = planes.iter().map(Vec::as_slice).collect();
                let mut back = vec![0; data.len()];
                merge(encoding, dtype, &views, &mut back);
                assert_eq!(back, data, "{dtype:?} {encoding:?}");
            }
        }
    }
}

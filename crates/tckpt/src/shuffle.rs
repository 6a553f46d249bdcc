//! Byte planes: the transposition between whole elements and one stream per byte of the
//! element (Blosc's "shuffle"), with the one-bit rotation of `float_planes`.
//!
//! Both directions run on every chunk the codec touches, so they must go at memory speed: the
//! 2- and 4-byte widths (bf16, f16, f32, i32: nearly all of a checkpoint) use SSE2, which every
//! x86-64 processor has, 16 elements at a time; the rest of a chunk and other widths use a
//! scalar loop on the native word. Both give the same bytes (tested below).

/// Writes byte k (little-endian) of element i of `data` to `outs[k][i]`, after rotating each
/// element left by one bit within its width if `rotate`. `outs` has one plane per byte of the
/// element, each `data.len() / outs.len()` bytes long.
pub(crate) fn split(data: &[u8], rotate: bool, outs: &mut [&mut [u8]]) {
    let done = simd::split(data, rotate, outs);
    let size = outs.len();
    let mut tails: Vec<&mut [u8]> = outs.iter_mut().map(|o| &mut o[done..]).collect();
    let data = &data[done * size..];
    match size {
        2 => split2(data, rotate, &mut tails),
        4 => split4(data, rotate, &mut tails),
        8 => split8(data, rotate, &mut tails),
        size => unreachable!("no planes for {size}-byte elements"),
    }
}

/// Inverse of [`split`]: element i of `out` gathers byte k from `planes[k][i]`.
pub(crate) fn merge(planes: &[&[u8]], rotate: bool, out: &mut [u8]) {
    let done = simd::merge(planes, rotate, out);
    let size = planes.len();
    let tails: Vec<&[u8]> = planes.iter().map(|p| &p[done..]).collect();
    let out = &mut out[done * size..];
    match size {
        2 => merge2(&tails, rotate, out),
        4 => merge4(&tails, rotate, out),
        8 => merge8(&tails, rotate, out),
        size => unreachable!("no planes for {size}-byte elements"),
    }
}

/// Defines the scalar split and merge of one element width, on the native word so that the
/// rotation is one instruction and the loops have no bounds checks left in them.
macro_rules! planes_of {
    ($split:ident, $merge:ident, $word:ty, $n:literal) => {
        fn $split(data: &[u8], rotate: bool, planes: &mut [&mut [u8]]) {
            let mut planes = planes.iter_mut();
            let mut outs: [&mut [u8]; $n] =
                std::array::from_fn(|_| std::mem::take(planes.next().expect("one plane per byte")));
            let n = data.len() / $n;
            for out in &mut outs {
                *out = &mut std::mem::take(out)[..n];
            }
            for (i, e) in data.chunks_exact($n).enumerate() {
                let mut x = <$word>::from_le_bytes(e.try_into().expect("whole element"));
                if rotate {
                    x = x.rotate_left(1);
                }
                let bytes = x.to_le_bytes();
                for k in 0..$n {
                    outs[k][i] = bytes[k];
                }
            }
        }

        fn $merge(planes: &[&[u8]], rotate: bool, out: &mut [u8]) {
            let n = out.len() / $n;
            let ins: [&[u8]; $n] = std::array::from_fn(|k| &planes[k][..n]);
            for (i, e) in out.chunks_exact_mut($n).enumerate() {
                let mut bytes = [0u8; $n];
                for k in 0..$n {
                    bytes[k] = ins[k][i];
                }
                let mut x = <$word>::from_le_bytes(bytes);
                if rotate {
                    x = x.rotate_right(1);
                }
                e.copy_from_slice(&x.to_le_bytes());
            }
        }
    };
}

planes_of!(split2, merge2, u16, 2);
planes_of!(split4, merge4, u32, 4);
planes_of!(split8, merge8, u64, 8);

#[cfg(target_arch = "x86_64")]
mod simd {
    //! SSE2 (part of x86-64 itself, so no run-time check): 16 elements per step.
    use std::arch::x86_64::*;

    /// Elements per step: one 16-byte register per plane.
    const STEP: usize = 16;

    /// Splits the leading whole steps of 2- or 4-byte elements; returns how many elements it
    /// did (0 for other widths).
    pub(super) fn split(data: &[u8], rotate: bool, outs: &mut [&mut [u8]]) -> usize {
        let size = outs.len();
        if size != 2 && size != 4 {
            return 0;
        }
        let n = data.len() / size;
        let steps = n / STEP;
        assert!(outs.iter().all(|o| o.len() >= steps * STEP));
        for s in 0..steps {
            let src = &data[s * STEP * size..(s + 1) * STEP * size];
            // SAFETY: SSE2 is always present on x86-64; every load reads 16 bytes inside `src`
            // (STEP * size bytes long) and every store writes 16 bytes inside a plane, whose
            // length was checked above.
            unsafe {
                let load = |k: usize| _mm_loadu_si128(src.as_ptr().add(16 * k).cast());
                if size == 2 {
                    let (mut a, mut b) = (load(0), load(1));
                    if rotate {
                        a = _mm_or_si128(_mm_slli_epi16(a, 1), _mm_srli_epi16(a, 15));
                        b = _mm_or_si128(_mm_slli_epi16(b, 1), _mm_srli_epi16(b, 15));
                    }
                    let low = _mm_set1_epi16(0xff);
                    let p0 = _mm_packus_epi16(_mm_and_si128(a, low), _mm_and_si128(b, low));
                    let p1 = _mm_packus_epi16(_mm_srli_epi16(a, 8), _mm_srli_epi16(b, 8));
                    _mm_storeu_si128(outs[0].as_mut_ptr().add(s * STEP).cast(), p0);
                    _mm_storeu_si128(outs[1].as_mut_ptr().add(s * STEP).cast(), p1);
                } else {
                    let mut v = [load(0), load(1), load(2), load(3)];
                    if rotate {
                        for x in &mut v {
                            *x = _mm_or_si128(_mm_slli_epi32(*x, 1), _mm_srli_epi32(*x, 31));
                        }
                    }
                    let low = _mm_set1_epi32(0xff);
                    // Byte k of each element, as 32-bit lanes; then packed to 16 bytes. The
                    // values are 0..=255, so the signed saturation of packs never applies.
                    let byte = |x: __m128i, k: i32| match k {
                        0 => _mm_and_si128(x, low),
                        1 => _mm_and_si128(_mm_srli_epi32(x, 8), low),
                        2 => _mm_and_si128(_mm_srli_epi32(x, 16), low),
                        _ => _mm_srli_epi32(x, 24),
                    };
                    for (k, out) in outs.iter_mut().enumerate() {
                        let k32 = k as i32;
                        let lo = _mm_packs_epi32(byte(v[0], k32), byte(v[1], k32));
                        let hi = _mm_packs_epi32(byte(v[2], k32), byte(v[3], k32));
                        _mm_storeu_si128(out.as_mut_ptr().add(s * STEP).cast(), _mm_packus_epi16(lo, hi));
                    }
                }
            }
        }
        steps * STEP
    }

    /// Merges the leading whole steps of 2- or 4-byte elements; returns how many elements it
    /// did (0 for other widths).
    pub(super) fn merge(planes: &[&[u8]], rotate: bool, out: &mut [u8]) -> usize {
        let size = planes.len();
        if size != 2 && size != 4 {
            return 0;
        }
        let n = out.len() / size;
        let steps = n / STEP;
        assert!(planes.iter().all(|p| p.len() >= steps * STEP));
        for s in 0..steps {
            let dst = &mut out[s * STEP * size..(s + 1) * STEP * size];
            // SAFETY: SSE2 is always present on x86-64; every load reads 16 bytes inside a
            // plane (length checked above) and every store writes 16 bytes inside `dst`
            // (STEP * size bytes long).
            unsafe {
                let load = |k: usize| _mm_loadu_si128(planes[k].as_ptr().add(s * STEP).cast());
                let store =
                    |dst: &mut [u8], k: usize, x: __m128i| _mm_storeu_si128(dst.as_mut_ptr().add(16 * k).cast(), x);
                if size == 2 {
                    let (p0, p1) = (load(0), load(1));
                    let mut a = _mm_unpacklo_epi8(p0, p1);
                    let mut b = _mm_unpackhi_epi8(p0, p1);
                    if rotate {
                        a = _mm_or_si128(_mm_srli_epi16(a, 1), _mm_slli_epi16(a, 15));
                        b = _mm_or_si128(_mm_srli_epi16(b, 1), _mm_slli_epi16(b, 15));
                    }
                    store(dst, 0, a);
                    store(dst, 1, b);
                } else {
                    let (p0, p1, p2, p3) = (load(0), load(1), load(2), load(3));
                    let (l01, h01) = (_mm_unpacklo_epi8(p0, p1), _mm_unpackhi_epi8(p0, p1));
                    let (l23, h23) = (_mm_unpacklo_epi8(p2, p3), _mm_unpackhi_epi8(p2, p3));
                    let mut v = [
                        _mm_unpacklo_epi16(l01, l23),
                        _mm_unpackhi_epi16(l01, l23),
                        _mm_unpacklo_epi16(h01, h23),
                        _mm_unpackhi_epi16(h01, h23),
                    ];
                    for (k, x) in v.iter_mut().enumerate() {
                        if rotate {
                            *x = _mm_or_si128(_mm_srli_epi32(*x, 1), _mm_slli_epi32(*x, 31));
                        }
                        store(dst, k, *x);
                    }
                }
            }
        }
        steps * STEP
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod simd {
    //! No vector path here: the scalar loops do everything.
    pub(super) fn split(_: &[u8], _: bool, _: &mut [&mut [u8]]) -> usize {
        0
    }
    pub(super) fn merge(_: &[&[u8]], _: bool, _: &mut [u8]) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn vector_and_scalar_paths_give_the_same_planes_and_back() {
        // Lengths around the 16-element step, so that both paths and the tail are exercised.
        for size in [2usize, 4, 8] {
            for n in [0usize, 1, 15, 16, 17, 31, 32, 33, 100, 1000] {
                let data = bytes(n * size, (size * 1000 + n) as u64);
                for rotate in [false, true] {
                    let mut fast = vec![vec![0u8; n]; size];
                    split(&data, rotate, &mut fast.iter_mut().map(Vec::as_mut_slice).collect::<Vec<_>>());
                    let mut slow = vec![vec![0u8; n]; size];
                    let mut outs: Vec<&mut [u8]> = slow.iter_mut().map(Vec::as_mut_slice).collect();
                    match size {
                        2 => split2(&data, rotate, &mut outs),
                        4 => split4(&data, rotate, &mut outs),
                        _ => split8(&data, rotate, &mut outs),
                    }
                    assert_eq!(fast, slow, "split of {n} {size}-byte elements, rotate {rotate}");
                    let views: Vec<&[u8]> = fast.iter().map(Vec::as_slice).collect();
                    let mut back = vec![0u8; data.len()];
                    merge(&views, rotate, &mut back);
                    assert_eq!(back, data, "merge of {n} {size}-byte elements, rotate {rotate}");
                }
            }
        }
    }
}

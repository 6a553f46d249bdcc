//! Writes one tensor whose dtype, shape, chunk size and bytes come from the input, and reads
//! it back: the writer must accept every shape, and the bytes must come back exactly. Shapes
//! reach rows of 2^18 elements and tensors of 256 KiB (issue #21: rows of 4097 to 131072
//! elements panicked the writer's entropy estimate).
//!
//! Input: `[dtype, rank | fill << 2, chunk, chunk_lo, chunk_hi]`, then three bytes per
//! dimension (a 16-bit mantissa and a shift: sizes spread evenly over their magnitudes), then
//! the bytes that fill the tensor (cycled). `cargo +nightly fuzz run round_trip` from
//! `crates/tckpt` (seeds: `corpus/round_trip/seed*`: float32 rows of 5000 and 32768,
//! bfloat16 rows of 11008, bytes rows of 4097, a rank-3 int32 tensor in 100-byte chunks).
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use tckpt::{Dtype, Reader, Writer, WriterOptions};

/// The most tensor bytes one input may ask for: two rows of 2^17 bytes, 2^16 16-bit or 2^15
/// 32-bit elements, deep into the rows that issue #21's panic reached (the unit tests cover
/// every row length); more costs runs (a 1 MiB tensor takes tens of milliseconds with
/// overflow checks). Sizes spread over their magnitudes keep most runs far smaller.
const MAX_BYTES: usize = 256 << 10;

fuzz_target!(|input: &[u8]| {
    let Some((head, rest)) = input.split_first_chunk::<5>() else {
        return;
    };
    let dtype = Dtype::ALL[head[0] as usize % Dtype::ALL.len()];
    let rank = (head[1] & 3) as usize;
    let fill = head[1] >> 2 & 3;
    // The default chunk (1 MiB), or a small one, so that rows span chunks.
    let chunk_bytes = if head[2] & 1 == 0 { 1 << 20 } else { 1 + u16::from_le_bytes([head[3], head[4]]) as usize };
    let Some((dims, bytes)) = rest.split_at_checked(3 * rank) else {
        return;
    };
    // The last dimension first, so that it may take the whole budget.
    let mut shape = vec![0usize; rank];
    let mut budget = MAX_BYTES / dtype.size();
    for (d, b) in shape.iter_mut().rev().zip(dims.chunks_exact(3).rev()) {
        let magnitude = (u16::from_le_bytes([b[0], b[1]]) as usize) << (b[2] % 21) >> 16;
        *d = magnitude.min(budget);
        budget /= (*d).max(1);
    }
    let len = shape.iter().product::<usize>() * dtype.size();
    let row = shape.last().copied().unwrap_or(1).max(1) * dtype.size();
    let source = if bytes.is_empty() { &[0][..] } else { bytes };
    let data: Vec<u8> = (0..len)
        .zip(source.iter().cycle())
        .map(|(i, &b)| {
            match fill {
                // Rows that differ by a constant: row differences pay.
                1 => b.wrapping_add((i / row) as u8),
                // Exponent-like top bytes of few values (floats' compressible plane).
                2 if i % dtype.size() == dtype.size() - 1 => 0x3c + (b & 3),
                _ => b,
            }
        })
        .collect();

    let mut w = Writer::with_options(Vec::new(), WriterOptions { threads: 1, chunk_bytes }).unwrap();
    w.add_tensor("t", dtype, &shape, &data).unwrap_or_else(|e| panic!("{dtype:?} {shape:?}: {e}"));
    let file = w.finish(Default::default()).unwrap();
    let mut r = Reader::with_threads(Cursor::new(file), 1).unwrap();
    assert_eq!(r.tensors()[0].shape, shape);
    assert!(r.read_tensor("t").unwrap() == data, "{dtype:?} {shape:?} differs");
    r.verify().unwrap();
});

//! Every dtype and shape comes back bit for bit, whatever the chunking and thread count.

mod common;

use common::{noise, open, write, Tensor};
use tckpt::{is_ckpt, Dtype, Reader, WriterOptions};

fn opts(threads: usize, chunk_bytes: usize) -> WriterOptions {
    WriterOptions { threads, chunk_bytes }
}

fn assert_round_trip(tensors: &[Tensor], options: WriterOptions) -> Vec<u8> {
    let file = write(tensors, &[("epoch", "2")], options);
    let mut r = open(&file).unwrap();
    assert_eq!(r.metadata()["epoch"], "2");
    assert_eq!(r.tensors().len(), tensors.len());
    for (info, t) in r.tensors().to_vec().iter().zip(tensors) {
        assert_eq!((&info.name, info.dtype, &info.shape), (&t.name, t.dtype, &t.shape));
        assert_eq!(info.raw_len, t.data.len() as u64);
        assert!(info.stored_len <= info.raw_len, "{}: stored beyond raw", t.name);
        let back = r.read_tensor(&t.name).unwrap();
        assert!(back == t.data, "{} ({:?}) differs", t.name, t.dtype);
        let mut into = vec![0xAA; t.data.len()];
        r.read_tensor_into(&t.name, &mut into).unwrap();
        assert!(into == t.data, "{} differs when read into a buffer", t.name);
    }
    r.verify().unwrap();
    file
}

#[test]
fn every_dtype_round_trips_bit_for_bit() {
    let shapes: [&[usize]; 6] = [&[], &[0], &[3, 0, 2], &[7], &[33, 17], &[4, 5, 6]];
    let mut tensors = Vec::new();
    for (d, &dtype) in Dtype::ALL.iter().enumerate() {
        for (s, shape) in shapes.iter().enumerate() {
            let name = format!("{dtype:?}/{s}");
            tensors.push(Tensor::weights(&name, dtype, shape, (d * 10 + s) as u64));
        }
    }
    assert_round_trip(&tensors, WriterOptions::default());
}

#[test]
fn chunk_boundaries_round_trip() {
    // Chunks of 1 element, of a size that does not divide the tensor, of exactly the tensor,
    // and larger than it; on one and three threads.
    for dtype in [Dtype::U8, Dtype::BF16, Dtype::F32, Dtype::F64] {
        let n = 1000;
        let t = Tensor::weights("t", dtype, &[10, 100], 7);
        for chunk_elems in [1, 3, 64, 999, 1000, 1001] {
            for threads in [1, 3] {
                assert_round_trip(std::slice::from_ref(&t), opts(threads, chunk_elems * dtype.size()));
            }
        }
        assert_eq!(t.data.len(), n * dtype.size());
    }
}

#[test]
fn special_float_values_round_trip() {
    let values: Vec<u32> = vec![
        0,
        0x8000_0000, // -0.0
        0x7f80_0000, // +inf
        0xff80_0000, // -inf
        0x7fc0_0001, // quiet NaN with payload
        0xffa0_0000, // signalling NaN, negative
        0x0000_0001, // smallest subnormal
        0x807f_ffff, // largest negative subnormal
        0x7f7f_ffff, // largest finite
    ];
    let data: Vec<u8> = values.iter().cycle().take(900).flat_map(|v| v.to_le_bytes()).collect();
    let f32s = Tensor::new("f32", Dtype::F32, &[900], data.clone());
    let f64s = Tensor::new("f64", Dtype::F64, &[450], data.clone());
    let halves = Tensor::new("bf16", Dtype::BF16, &[1800], data);
    assert_round_trip(&[f32s, f64s, halves], opts(2, 256));
}

#[test]
fn structured_and_random_data_round_trip() {
    // Zeros (LZ), ramps (element differences), rows that repeat with an offset (row
    // differences), noise (stored raw).
    let zeros = Tensor::new("zeros", Dtype::F32, &[64, 1024], vec![0; 64 * 1024 * 4]);
    let ramp: Vec<u8> = (0..50_000i64).flat_map(|i| (i * 3).to_le_bytes()).collect();
    let ramp = Tensor::new("ramp", Dtype::I64, &[50_000], ramp);
    let row: Vec<u8> = noise(512, 1);
    let rows: Vec<u8> = (0..200u8).flat_map(|r| row.iter().map(move |b| b.wrapping_add(r))).collect();
    let rows = Tensor::new("rows", Dtype::U8, &[200, 512], rows);
    let random = Tensor::new("noise", Dtype::BF16, &[100_000], noise(200_000, 2));
    let file = assert_round_trip(&[zeros, ramp, rows, random], opts(2, 1 << 16));
    let r = open(&file).unwrap();
    let stored = |name: &str| r.tensor(name).unwrap().stored_len;
    assert!(stored("zeros") < 2_000, "zeros: {}", stored("zeros"));
    assert!(stored("ramp") < 20_000, "ramp: {}", stored("ramp"));
    assert!(stored("rows") < 20_000, "rows: {}", stored("rows"));
    assert_eq!(stored("noise"), 200_000);
}

#[test]
fn trained_looking_floats_shrink() {
    let t = Tensor::weights("w", Dtype::F32, &[256, 1024], 3);
    let file = assert_round_trip(std::slice::from_ref(&t), WriterOptions::default());
    let ratio = t.data.len() as f64 / file.len() as f64;
    assert!(ratio > 1.15, "ratio {ratio:.3}");
}

#[test]
fn output_does_not_depend_on_thread_count() {
    let tensors: Vec<Tensor> = (0..4).map(|i| Tensor::weights(&format!("t{i}"), Dtype::BF16, &[300, 100], i)).collect();
    let one = write(&tensors, &[], opts(1, 4096));
    let four = write(&tensors, &[], opts(4, 4096));
    assert!(one == four);
}

#[test]
fn files_on_disk_are_read_with_seeks() {
    let tensors = [Tensor::weights("a", Dtype::F32, &[100, 10], 1), Tensor::weights("b", Dtype::I32, &[10], 2)];
    let file = write(&tensors, &[], WriterOptions::default());
    assert!(is_ckpt(&file));
    let path = std::env::temp_dir().join(format!("train-ckpt-{}.ckpt", std::process::id()));
    std::fs::write(&path, &file).unwrap();
    let mut r = Reader::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap())).unwrap();
    // Out of file order: the reader seeks.
    assert_eq!(r.read_tensor("b").unwrap(), tensors[1].data);
    assert_eq!(r.read_tensor("a").unwrap(), tensors[0].data);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn an_empty_file_has_no_tensors() {
    let file = write(&[], &[], WriterOptions::default());
    let mut r = open(&file).unwrap();
    assert!(r.tensors().is_empty() && r.metadata().is_empty());
    r.verify().unwrap();
}

#[test]
fn many_tensors_decode_into_buffers_in_one_call() {
    // Large tensors of several chunks beside many small ones, asked for out of file order.
    let mut tensors = vec![Tensor::weights("big", Dtype::F32, &[64, 1000], 1)];
    for i in 0..300 {
        tensors.push(Tensor::weights(&format!("small{i}"), Dtype::ALL[i % 10], &[i % 17 + 1, 3], i as u64));
    }
    tensors.push(Tensor::weights("empty", Dtype::BF16, &[0, 4], 9));
    tensors.push(Tensor::weights("big2", Dtype::BF16, &[128, 500], 2));
    let file = write(&tensors, &[], opts(2, 16 << 10));
    for threads in [1, 2, 5] {
        let mut r = Reader::with_threads(std::io::Cursor::new(&file), threads).unwrap();
        let mut outs: Vec<Vec<u8>> = tensors.iter().map(|t| vec![0xAA; t.data.len()]).collect();
        let mut targets: Vec<(&str, &mut [u8])> =
            tensors.iter().zip(outs.iter_mut()).rev().map(|(t, o)| (t.name.as_str(), o.as_mut_slice())).collect();
        r.read_tensors_into(&mut targets).unwrap();
        for (t, o) in tensors.iter().zip(&outs) {
            assert!(*o == t.data, "{} differs on {threads} threads", t.name);
        }
    }
}

#[test]
fn small_tensors_are_batched_without_changing_the_file() {
    // Tensors smaller than a chunk are coded together, whatever the thread count and however
    // they interleave with tensors of several chunks; the bytes written do not change.
    let mut tensors = Vec::new();
    for i in 0..200u64 {
        tensors.push(Tensor::weights(&format!("s{i}"), Dtype::F32, &[(i as usize % 50) + 1, 7], i));
        if i % 60 == 0 {
            tensors.push(Tensor::weights(&format!("large{i}"), Dtype::BF16, &[100, 100], i));
        }
    }
    let one = write(&tensors, &[], opts(1, 4096));
    let three = write(&tensors, &[], opts(3, 4096));
    assert!(one == three);
    assert_round_trip(&tensors, opts(3, 4096));
}

#[test]
fn records_of_batched_tensors_follow_the_order_they_were_added() {
    let tensors: Vec<Tensor> = (0..50).map(|i| Tensor::weights(&format!("t{i}"), Dtype::I32, &[i], i as u64)).collect();
    let file = write(&tensors, &[], WriterOptions::default());
    let r = open(&file).unwrap();
    let names: Vec<&str> = r.tensors().iter().map(|t| t.name.as_str()).collect();
    let expected: Vec<String> = (0..50).map(|i| format!("t{i}")).collect();
    assert_eq!(names, expected);
}

#[test]
fn mapped_files_decode_as_read_files_do() {
    // A file of several windows (verify's scratch window is 4 MiB a thread), read through
    // mapped windows: all of it, a subset with gaps out of order, and tensor by tensor.
    let mut tensors = vec![Tensor::weights("big", Dtype::F32, &[1280, 1024], 1)];
    for i in 0..40 {
        tensors.push(Tensor::weights(&format!("small{i}"), Dtype::ALL[i % 10], &[i % 7 + 1, 5], i as u64));
    }
    tensors.push(Tensor::weights("big2", Dtype::BF16, &[700, 1024], 2));
    let file = write(&tensors, &[], opts(2, 256 << 10));
    let path = std::env::temp_dir().join(format!("train-ckpt-mapped-{}.ckpt", std::process::id()));
    std::fs::write(&path, &file).unwrap();
    for threads in [1, 2] {
        let mut r = Reader::from_file(std::fs::File::open(&path).unwrap(), threads).unwrap();
        r.verify().unwrap();
        let picked: Vec<&Tensor> = tensors.iter().rev().step_by(3).collect();
        let mut outs: Vec<Vec<u8>> = picked.iter().map(|t| vec![0xAA; t.data.len()]).collect();
        let mut targets: Vec<(&str, &mut [u8])> =
            picked.iter().zip(outs.iter_mut()).map(|(t, o)| (t.name.as_str(), o.as_mut_slice())).collect();
        r.read_tensors_into(&mut targets).unwrap();
        for (t, o) in picked.iter().zip(&outs) {
            assert!(*o == t.data, "{} differs on {threads} threads", t.name);
        }
        for t in &tensors {
            assert!(r.read_tensor(&t.name).unwrap() == t.data, "{}", t.name);
        }
    }
    // Damage inside the first record is found through the mapping too.
    let mut damaged = file.clone();
    damaged[4096] ^= 0x40;
    std::fs::write(&path, &damaged).unwrap();
    let mut r = Reader::from_file(std::fs::File::open(&path).unwrap(), 2).unwrap();
    let mut out = vec![0u8; tensors[0].data.len()];
    let err = r.read_tensor_into("big", &mut out).unwrap_err();
    assert!(matches!(err, tckpt::Error::ChecksumMismatch { .. } | tckpt::Error::Corrupt { .. }), "{err}");
    std::fs::remove_file(&path).unwrap();
}

/// Issue #21: rows of 4097 to 131072 elements made the writer's entropy estimate subtract
/// past zero (a sampled block lying wholly within the first row) and panic, in every dtype.
#[test]
fn a_last_dimension_of_4097_to_131072_does_not_panic_the_writer() {
    let tensors = [
        Tensor::weights("f32", Dtype::F32, &[64, 5000], 1),
        Tensor::weights("bf16", Dtype::BF16, &[64, 11008], 2),
        Tensor::weights("u8", Dtype::U8, &[3, 4097], 3),
        Tensor::weights("f64", Dtype::F64, &[2, 131072], 4),
    ];
    assert_round_trip(&tensors, WriterOptions::default());
}

/// A tensor with a dimension of 0 may have any last dimension: its row length in bytes
/// (last dimension × element size) overflowed in the writer and the reader (a panic where
/// overflow is checked, as in fuzzing builds) although it has no bytes to code.
#[test]
fn an_empty_tensor_with_a_huge_last_dimension_round_trips() {
    let t = Tensor::new("e", Dtype::F64, &[0, 1 << 62], Vec::new());
    assert_round_trip(&[t], WriterOptions::default());
}

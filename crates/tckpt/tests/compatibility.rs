//! Files written by earlier versions of the format stay readable.
//!
//! `fixtures/v1.ckpt` was written by the version-1 writer (commit 74a9e57, before version 2)
//! from exactly the tensors [`v1_tensors`] builds, with `WriterOptions { threads: 2,
//! chunk_bytes: 4096 }` and the metadata below. It holds every encoding and every codec:
//! `float_planes` with raw and zstd planes, `planes` with `delta_zstd`, `bytes` with
//! `row_delta_zstd`, an empty tensor and a scalar, a tensor of several chunks.
//!
//! `fixtures/v2.ckpt` was written by the version-2 writer (commit 87205c2, before version 3)
//! from the same tensors, options and metadata.

mod common;

use std::io::Cursor;

use common::{noise, Tensor};
use tckpt::{Dtype, Error, Reader};

const V1: &[u8] = include_bytes!("fixtures/v1.ckpt");
const V2: &[u8] = include_bytes!("fixtures/v2.ckpt");

fn v1_tensors() -> Vec<Tensor> {
    let ramp: Vec<u8> = (0..2000i64).flat_map(|i| (i * 3).to_le_bytes()).collect();
    let row: Vec<u8> = noise(64, 1);
    let rows: Vec<u8> = (0..40u8).flat_map(|r| row.iter().map(move |b| b.wrapping_add(r))).collect();
    vec![
        Tensor::weights("w", Dtype::F32, &[8, 40], 1),
        Tensor::weights("b", Dtype::F32, &[8], 2),
        Tensor::new("n", Dtype::BF16, &[200], noise(400, 3)),
        Tensor::weights("step", Dtype::I64, &[], 4),
        Tensor::weights("h", Dtype::BF16, &[16, 64], 5),
        Tensor::weights("ids", Dtype::I32, &[300], 6),
        Tensor::weights("mask", Dtype::Bool, &[50], 7),
        Tensor::new("zeros", Dtype::F32, &[64, 16], vec![0; 4096]),
        Tensor::weights("empty", Dtype::F64, &[3, 0], 8),
        Tensor::new("ramp", Dtype::I64, &[2000], ramp),
        Tensor::new("rows", Dtype::U8, &[40, 64], rows),
    ]
}

#[test]
fn version_1_files_read_bit_for_bit() {
    reads_bit_for_bit(V1, 1);
}

#[test]
fn version_2_files_read_bit_for_bit() {
    reads_bit_for_bit(V2, 2);
    // Through mapped windows too.
    let path = std::env::temp_dir().join(format!("train-ckpt-v2-{}.ckpt", std::process::id()));
    std::fs::write(&path, V2).unwrap();
    let mut r = Reader::from_file(std::fs::File::open(&path).unwrap(), 2).unwrap();
    for t in v1_tensors() {
        assert!(r.read_tensor(&t.name).unwrap() == t.data, "{} differs", t.name);
    }
    std::fs::remove_file(&path).unwrap();
}

fn reads_bit_for_bit(file: &[u8], version: u32) {
    assert_eq!(file[8..12], version.to_le_bytes(), "the fixture is a version-{version} file");
    let tensors = v1_tensors();
    for threads in [1, 2, 3] {
        let mut r = Reader::with_threads(Cursor::new(file), threads).unwrap();
        assert_eq!(r.metadata()["epoch"], "2");
        assert_eq!(r.metadata()["format"], "train.checkpoint");
        assert_eq!(r.tensors().len(), tensors.len());
        for (info, t) in r.tensors().to_vec().iter().zip(&tensors) {
            assert_eq!((&info.name, info.dtype, &info.shape), (&t.name, t.dtype, &t.shape));
            assert!(r.read_tensor(&t.name).unwrap() == t.data, "{} differs", t.name);
            let mut into = vec![0xAA; t.data.len()];
            r.read_tensor_into(&t.name, &mut into).unwrap();
            assert!(into == t.data, "{} differs when read into a buffer", t.name);
        }
        r.verify().unwrap();
    }
}

#[test]
fn version_1_damage_is_still_caught_by_the_tensor_checksum() {
    // Flip a bit inside the raw BF16 noise of tensor "n": only the checksum can notice.
    let mut bad = V1.to_vec();
    let r = Reader::new(Cursor::new(V1)).unwrap();
    let before: u64 = r.tensors().iter().take_while(|t| t.name != "n").map(|t| t.stored_len).sum();
    bad[16 + before as usize + 3] ^= 0x04;
    let mut r = Reader::new(Cursor::new(&bad)).unwrap();
    let err = r.read_tensor("n").unwrap_err();
    assert!(matches!(&err, Error::ChecksumMismatch { name, .. } if name == "n"), "{err}");
    assert!(r.read_tensor("w").is_ok());
    assert!(matches!(r.verify(), Err(Error::ChecksumMismatch { .. })));
}

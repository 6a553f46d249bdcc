//! Damaged, truncated, lying and foreign files are refused with errors that say what is
//! wrong, never with a panic or an allocation the file's real bytes do not back.

mod common;

use std::io::{Read, Seek, SeekFrom};

use common::{assemble, index_json, noise, open, read_all, with_index, write, Tensor};
use serde_json::json;
use tckpt::{Dtype, Error, Reader, Writer, WriterOptions, MAGIC, MAX_INDEX_LEN};

/// A small file with every encoding in it: floats in planes, bytes, a raw plane, several
/// chunks.
fn sample() -> (Vec<Tensor>, Vec<u8>) {
    let tensors = vec![
        Tensor::weights("w", Dtype::F32, &[8, 40], 1),
        Tensor::weights("b", Dtype::F32, &[8], 2),
        Tensor::new("n", Dtype::BF16, &[200], noise(400, 3)),
        Tensor::weights("step", Dtype::I64, &[], 4),
    ];
    let options = WriterOptions { threads: 2, chunk_bytes: 512 };
    let file = write(&tensors, &[("k", "v")], options);
    (tensors, file)
}

#[test]
fn rejects_truncated_file_at_every_length() {
    let (_, file) = sample();
    for len in 0..file.len() {
        let err = open(&file[..len]).err().unwrap_or_else(|| panic!("cut at {len} opened"));
        let expected = match len {
            0..=47 => matches!(err, Error::Truncated { .. }),
            _ => matches!(err, Error::BadTrailer),
        };
        assert!(expected, "cut at {len}: {err}");
    }
}

#[test]
fn every_single_bit_flip_is_rejected_or_harmless() {
    // Harmless: a few bits of a zstd frame header are reserved and ignored by decoders (the
    // frame header descriptor's unused bit); the data they frame still reads back exact.
    let (tensors, file) = sample();
    let original: Vec<Vec<u8>> = tensors.iter().map(|t| t.data.clone()).collect();
    assert_eq!(read_all(&file).unwrap(), original);
    let mut harmless = 0;
    for byte in 0..file.len() {
        for bit in 0..8 {
            let mut bad = file.clone();
            bad[byte] ^= 1 << bit;
            if let Ok(data) = read_all(&bad) {
                assert!(data == original, "bit {bit} of byte {byte} changed data unnoticed");
                harmless += 1;
            }
        }
    }
    let flips = file.len() * 8;
    assert!(harmless * 1000 < flips, "{harmless} of {flips} flips went unnoticed");
}

#[test]
fn names_the_tensor_whose_data_is_damaged() {
    let (_, file) = sample();
    // The BF16 noise is stored raw: a flipped bit there can only show in the checksum.
    let n = &index_json(&file)["tensors"][2];
    assert_eq!(n["name"], "n");
    assert_eq!(n["chunks"][0][0][0], "raw");
    let mut bad = file.clone();
    bad[n["offset"].as_u64().unwrap() as usize + 5] ^= 0x10;
    let mut r = open(&bad).unwrap();
    let err = r.read_tensor("n").unwrap_err();
    assert!(matches!(&err, Error::ChecksumMismatch { name, .. } if name == "n"), "{err}");
    assert!(err.to_string().contains("\"n\""), "{err}");
    // The other tensors still read.
    assert!(r.read_tensor("w").is_ok());
    assert!(matches!(r.verify(), Err(Error::ChecksumMismatch { .. })));
}

#[test]
fn rejects_bad_magic_and_foreign_formats() {
    let (_, file) = sample();
    let mut bad = file.clone();
    bad[1] = b'X';
    assert!(matches!(open(&bad), Err(Error::NotACheckpoint)));
    // A safetensors file and a zstd frame.
    let st = safetensors::serialize(
        [("x", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0; 4]).unwrap())],
        None,
    )
    .unwrap();
    assert!(matches!(open(&st), Err(Error::NotACheckpoint)));
    let zst = zstd::bulk::compress(&file, 3).unwrap();
    assert!(matches!(open(&zst), Err(Error::NotACheckpoint)));
    assert!(matches!(open(b"hello"), Err(Error::Truncated { len: 5, .. })));
    assert!(matches!(open(b"not a checkpoint at all"), Err(Error::NotACheckpoint)));
}

#[test]
fn rejects_newer_version_and_unknown_flags() {
    let (_, file) = sample();
    let mut newer = file.clone();
    newer[8] = 4;
    let err = open(&newer).err().unwrap();
    assert!(matches!(err, Error::UnsupportedVersion { found: 4, supported: 3 }), "{err}");
    assert!(err.to_string().contains("version 4"));
    let mut flagged = file;
    flagged[15] = 0x80;
    assert!(matches!(open(&flagged), Err(Error::UnsupportedFlags { flags: 0x8000_0000 })));
}

/// A source that claims to be `len` bytes long: `head`, zeros, then `tail`; it fails the
/// test if more than 1 MiB is read from it.
struct Sparse {
    len: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
    pos: u64,
    read: u64,
}

impl Read for Sparse {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
        let tail_start = self.len - self.tail.len() as u64;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let at = self.pos + i as u64;
            *b = if at < self.head.len() as u64 {
                self.head[at as usize]
            } else if at >= tail_start {
                self.tail[(at - tail_start) as usize]
            } else {
                0
            };
        }
        self.pos += n as u64;
        self.read += n as u64;
        assert!(self.read < 1 << 20, "the reader read {} bytes", self.read);
        Ok(n)
    }
}

impl Seek for Sparse {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::End(d) => self.len.wrapping_add_signed(d),
            SeekFrom::Current(d) => self.pos.wrapping_add_signed(d),
        };
        Ok(self.pos)
    }
}

#[test]
fn rejects_oversized_index_without_reading_it() {
    // A 1 TiB "file" whose trailer points at a 1 GiB index: refused before allocation.
    let len = 1u64 << 40;
    let index_len = 1u64 << 30;
    let mut head = MAGIC.to_vec();
    head.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    let mut tail = Vec::new();
    tail.extend_from_slice(&(len - 32 - index_len).to_le_bytes());
    tail.extend_from_slice(&index_len.to_le_bytes());
    tail.extend_from_slice(&0u64.to_le_bytes());
    tail.extend_from_slice(b"TRNCKIDX");
    let source = Sparse { len, head, tail, pos: 0, read: 0 };
    let err = Reader::new(source).err().unwrap();
    assert!(matches!(err, Error::IndexTooLarge { len, max } if len == index_len && max == MAX_INDEX_LEN), "{err}");
}

#[test]
fn rejects_trailer_pointing_outside_the_file() {
    let (_, file) = sample();
    let n = file.len();
    for (offset, len) in [(0u64, 10u64), (8, 10), (u64::MAX - 4, 10), (16, u64::MAX)] {
        let mut bad = file.clone();
        bad[n - 32..n - 24].copy_from_slice(&offset.to_le_bytes());
        bad[n - 24..n - 16].copy_from_slice(&len.to_le_bytes());
        assert!(matches!(open(&bad), Err(Error::IndexOutOfBounds { .. })), "{offset} {len}");
    }
}

#[test]
fn rejects_indexes_whose_numbers_lie() {
    let (_, file) = sample();
    let good = index_json(&file);
    type Lie = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Lie)> = vec![
        ("raw_len", Box::new(|i| i["tensors"][0]["raw_len"] = json!(1u64 << 40))),
        (
            "chunks listed",
            Box::new(|i| {
                i["tensors"][0]["shape"] = json!([1u64 << 40, 1]);
                i["tensors"][0]["raw_len"] = json!(4u64 << 40);
            }),
        ),
        ("overflows", Box::new(|i| i["tensors"][0]["shape"] = json!([u64::MAX, 3]))),
        ("rank", Box::new(|i| i["tensors"][0]["shape"] = json!(vec![1; 65]))),
        ("record at offset", Box::new(|i| i["tensors"][1]["offset"] = json!(17))),
        (
            "stored_len",
            Box::new(|i| {
                let s = i["tensors"][1]["stored_len"].as_u64().unwrap();
                i["tensors"][1]["stored_len"] = json!(s + 1);
            }),
        ),
        ("appears twice", Box::new(|i| i["tensors"][1]["name"] = json!("w"))),
        ("hex", Box::new(|i| i["tensors"][0]["chunk_xxh3"][0] = json!("not hex"))),
        ("chunk checksums for", Box::new(|i| i["tensors"][0]["chunk_xxh3"].as_array_mut().unwrap().clear())),
        ("version-3 entry", Box::new(|i| i["tensors"][1]["xxh3"] = json!("0123456789abcdef"))),
        ("does not apply", Box::new(|i| i["tensors"][3]["encoding"] = json!("float_planes"))),
        ("unknown field", Box::new(|i| i["tensors"][0]["extra"] = json!(1))),
        ("unknown variant", Box::new(|i| i["tensors"][0]["dtype"] = json!("F128"))),
        (
            "index starts at",
            Box::new(|i| {
                i["tensors"].as_array_mut().unwrap().pop();
            }),
        ),
        ("outside 1..=", Box::new(|i| i["tensors"][0]["chunk_elems"] = json!(0))),
    ];
    for (expected, lie) in cases {
        let mut index = good.clone();
        lie(&mut index);
        let err = open(&with_index(&file, &index)).err().unwrap_or_else(|| panic!("{expected}: opened"));
        assert!(err.to_string().contains(expected), "{expected}: {err}");
    }
}

#[test]
fn rejects_garbage_where_a_zstd_frame_should_be() {
    // One tensor, one chunk, one zstd plane of 8 bytes that are not a zstd frame.
    let index = json!({"metadata": {}, "tensors": [{
        "name": "x", "dtype": "U8", "shape": [100], "encoding": "bytes", "offset": 16,
        "stored_len": 8, "raw_len": 100, "xxh3": "0000000000000000", "chunk_elems": 100,
        "chunks": [[["zstd", 8]]]}]});
    let file = assemble(1, b"garbage!", &serde_json::to_vec(&index).unwrap());
    let mut r = open(&file).unwrap();
    let err = r.read_tensor("x").unwrap_err();
    assert!(matches!(&err, Error::Corrupt { name, chunk: 0, plane: 0, offset: 16, .. } if name == "x"), "{err}");
}

#[test]
fn rejects_a_plane_claiming_more_than_zstd_can_expand() {
    // 4 stored bytes cannot decode to 1 MiB: refused before any allocation for it.
    let index = json!({"metadata": {}, "tensors": [{
        "name": "x", "dtype": "U8", "shape": [1 << 20], "encoding": "bytes", "offset": 16,
        "stored_len": 4, "raw_len": 1 << 20, "xxh3": "0000000000000000",
        "chunk_elems": 1 << 20, "chunks": [[["zstd", 4]]]}]});
    let file = assemble(1, b"abcd", &serde_json::to_vec(&index).unwrap());
    let err = open(&file).err().unwrap();
    assert!(err.to_string().contains("plane of 4 bytes for 1048576 raw bytes"), "{err}");
}

#[test]
fn rejects_a_frame_that_decodes_to_the_wrong_length() {
    let frame = zstd::bulk::compress(&[7u8; 50], 1).unwrap();
    let index = json!({"metadata": {}, "tensors": [{
        "name": "x", "dtype": "U8", "shape": [100], "encoding": "bytes", "offset": 16,
        "stored_len": frame.len(), "raw_len": 100, "xxh3": "0000000000000000",
        "chunk_elems": 100, "chunks": [[["zstd", frame.len()]]]}]});
    let file = assemble(1, &frame, &serde_json::to_vec(&index).unwrap());
    let err = open(&file).unwrap().read_tensor("x").unwrap_err();
    assert!(err.to_string().contains("50 bytes decoded, 100 expected"), "{err}");
}

#[test]
fn rejects_misuse_with_named_errors() {
    let (tensors, file) = sample();
    let mut r = open(&file).unwrap();
    assert!(matches!(r.read_tensor("nope"), Err(Error::TensorNotFound { name }) if name == "nope"));
    let mut short = vec![0; 3];
    assert!(matches!(r.read_tensor_into("w", &mut short), Err(Error::LengthMismatch { expected: 1280, got: 3, .. })));
    let mut w = Writer::new(Vec::new()).unwrap();
    w.add_tensor("a", Dtype::F32, &[2], &[0; 8]).unwrap();
    assert!(matches!(w.add_tensor("a", Dtype::F32, &[2], &[0; 8]), Err(Error::DuplicateName { .. })));
    assert!(matches!(
        w.add_tensor("b", Dtype::F32, &[3], &[0; 8]),
        Err(Error::LengthMismatch { expected: 12, got: 8, .. })
    ));
    assert!(w.add_tensor("c", Dtype::U8, &[1; 65], &[0]).is_err());
    assert!(w.add_tensor("d", Dtype::U8, &[usize::MAX, 2], &[]).is_err());
    assert_eq!(tensors.len(), 4);
}

#[test]
fn damage_in_one_tensor_of_a_batch_read_names_that_tensor() {
    // Several tensors decoded in one call, in parallel: the damaged one is named, in a raw
    // plane (caught by its chunk checksum) and in a zstd plane (caught by the decoder or the
    // checksum), and the others still read on their own.
    let (tensors, file) = sample();
    let index = index_json(&file);
    let n = &index["tensors"][2];
    let mut bad = file.clone();
    bad[n["offset"].as_u64().unwrap() as usize + 7] ^= 0x01;
    for threads in [1, 2, 4] {
        let mut r = Reader::with_threads(std::io::Cursor::new(&bad), threads).unwrap();
        let mut outs: Vec<Vec<u8>> = tensors.iter().map(|t| vec![0; t.data.len()]).collect();
        let mut targets: Vec<(&str, &mut [u8])> =
            tensors.iter().zip(outs.iter_mut()).map(|(t, o)| (t.name.as_str(), o.as_mut_slice())).collect();
        let err = r.read_tensors_into(&mut targets).unwrap_err();
        assert!(matches!(&err, Error::ChecksumMismatch { name, .. } if name == "n"), "{err}");
        assert_eq!(r.read_tensor("w").unwrap(), tensors[0].data);
        assert_eq!(r.read_tensor("step").unwrap(), tensors[3].data);
    }
    // A flipped byte in the compressed part of "w".
    let w = &index["tensors"][0];
    let planes = w["chunks"][0].as_array().unwrap();
    let before: u64 = planes.iter().take_while(|p| p[0] == "raw").map(|p| p[1].as_u64().unwrap()).sum();
    assert!(planes.iter().any(|p| p[0] != "raw"), "{planes:?}");
    let mut bad = file.clone();
    bad[(w["offset"].as_u64().unwrap() + before) as usize + 3] ^= 0x40;
    let mut r = open(&bad).unwrap();
    let mut out = vec![0; tensors[0].data.len()];
    let mut b = vec![0; tensors[1].data.len()];
    let err = r.read_tensors_into(&mut [("b", &mut b[..]), ("w", &mut out[..])]).unwrap_err();
    match &err {
        Error::ChecksumMismatch { name, .. } | Error::Corrupt { name, .. } => assert_eq!(name, "w", "{err}"),
        other => panic!("{other}"),
    }
}

#[test]
fn read_tensors_into_refuses_wrong_lengths_and_unknown_names() {
    let (tensors, file) = sample();
    let mut r = open(&file).unwrap();
    let mut short = vec![0; tensors[0].data.len() - 1];
    assert!(matches!(r.read_tensors_into(&mut [("w", &mut short[..])]), Err(Error::LengthMismatch { .. })));
    let mut any = [0; 4];
    assert!(matches!(r.read_tensors_into(&mut [("nope", &mut any[..])]), Err(Error::TensorNotFound { .. })));
}

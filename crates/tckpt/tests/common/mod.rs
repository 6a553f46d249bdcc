//! Test data and file surgery shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::collections::BTreeMap;
use std::io::Cursor;

use tckpt::{Dtype, Reader, Writer, WriterOptions, MAGIC};

/// A deterministic stream of pseudo-random u64s (PCG-style LCG, high bits).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 ^ (self.0 >> 29)
    }

    /// Roughly normal, mean 0, standard deviation `scale` (sum of four uniforms).
    pub fn normal(&mut self, scale: f64) -> f64 {
        let u: f64 = (0..4).map(|_| (self.next() >> 11) as f64 / (1u64 << 53) as f64).sum();
        (u - 2.0) * 1.7320508 * scale
    }
}

/// `n` elements of `dtype` that look like trained weights: normal floats, small integers.
pub fn weights(dtype: Dtype, n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n * dtype.size());
    for _ in 0..n {
        let x = rng.normal(0.05);
        match dtype {
            Dtype::Bool => out.push((rng.next() & 1) as u8),
            Dtype::U8 | Dtype::I8 => out.push((x * 1000.0) as i8 as u8),
            Dtype::I16 => out.extend_from_slice(&((x * 1e4) as i16).to_le_bytes()),
            Dtype::I32 => out.extend_from_slice(&((x * 1e6) as i32).to_le_bytes()),
            Dtype::I64 => out.extend_from_slice(&((x * 1e9) as i64).to_le_bytes()),
            Dtype::F16 | Dtype::BF16 => {
                let bits = (x as f32).to_bits();
                let half = if dtype == Dtype::BF16 {
                    (bits >> 16) as u16
                } else {
                    // A float16 with the same sign and nearby exponent: the exact value does
                    // not matter to a byte-level round trip.
                    ((bits >> 16) & 0x8000) as u16 | ((bits >> 13) & 0x7fff) as u16
                };
                out.extend_from_slice(&half.to_le_bytes());
            }
            Dtype::F32 => out.extend_from_slice(&(x as f32).to_le_bytes()),
            Dtype::F64 => out.extend_from_slice(&x.to_le_bytes()),
        }
    }
    out
}

/// Uniformly random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| (rng.next() >> 56) as u8).collect()
}

/// One tensor to write.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Tensor {
    pub fn new(name: &str, dtype: Dtype, shape: &[usize], data: Vec<u8>) -> Self {
        Tensor { name: name.into(), dtype, shape: shape.to_vec(), data }
    }

    /// A tensor of trained-looking values of that shape.
    pub fn weights(name: &str, dtype: Dtype, shape: &[usize], seed: u64) -> Self {
        let n = shape.iter().product();
        Tensor::new(name, dtype, shape, weights(dtype, n, seed))
    }
}

/// Writes the tensors and metadata to bytes.
pub fn write(tensors: &[Tensor], metadata: &[(&str, &str)], options: WriterOptions) -> Vec<u8> {
    let mut w = Writer::with_options(Vec::new(), options).unwrap();
    for t in tensors {
        w.add_tensor(&t.name, t.dtype, &t.shape, &t.data).unwrap();
    }
    let metadata: BTreeMap<String, String> = metadata.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect();
    w.finish(metadata).unwrap()
}

/// Opens bytes as a file.
pub fn open(bytes: &[u8]) -> tckpt::Result<Reader<Cursor<&[u8]>>> {
    Reader::new(Cursor::new(bytes))
}

/// Opens, verifies and reads every tensor (on one thread: tests call this thousands of
/// times): the first error, if any.
pub fn read_all(bytes: &[u8]) -> tckpt::Result<Vec<Vec<u8>>> {
    let mut r = Reader::with_threads(Cursor::new(bytes), 1)?;
    r.verify()?;
    let names: Vec<String> = r.tensors().iter().map(|t| t.name.clone()).collect();
    names.iter().map(|n| r.read_tensor(n)).collect()
}

/// Where a file's index starts and ends (from its trailer).
pub fn index_range(file: &[u8]) -> std::ops::Range<usize> {
    let n = file.len();
    let offset = u64::from_le_bytes(file[n - 32..n - 24].try_into().unwrap()) as usize;
    let len = u64::from_le_bytes(file[n - 24..n - 16].try_into().unwrap()) as usize;
    offset..offset + len
}

/// A file's index as JSON.
pub fn index_json(file: &[u8]) -> serde_json::Value {
    serde_json::from_slice(&file[index_range(file)]).unwrap()
}

/// Builds a file from a version, tensor record bytes and an index, with a correct trailer
/// (offset, length, checksum): for testing what a reader does with a well-formed file whose
/// contents lie.
pub fn assemble(version: u32, records: &[u8], index: &[u8]) -> Vec<u8> {
    let mut f = MAGIC.to_vec();
    f.extend_from_slice(&version.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(records);
    let offset = f.len() as u64;
    f.extend_from_slice(index);
    f.extend_from_slice(&offset.to_le_bytes());
    f.extend_from_slice(&(index.len() as u64).to_le_bytes());
    f.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(index).to_le_bytes());
    f.extend_from_slice(b"TRNCKIDX");
    f
}

/// Replaces a file's index with `index` (re-checksummed), keeping its records.
pub fn with_index(file: &[u8], index: &serde_json::Value) -> Vec<u8> {
    let range = index_range(file);
    let version = u32::from_le_bytes(file[8..12].try_into().unwrap());
    assemble(version, &file[16..range.start], &serde_json::to_vec(index).unwrap())
}

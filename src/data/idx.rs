//! Reader for the IDX format of (Fashion-)MNIST, plain or gzipped.
//!
//! Layout (big-endian): two zero bytes, a type byte (0x08 = unsigned byte, the only one
//! these data sets use), the number of dimensions `d`, then `d` u32 sizes, then the data.
//! Sizes are checked against the bytes actually present before anything is allocated.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::DataError;

/// IDX type code of unsigned bytes.
const TYPE_U8: u8 = 0x08;

/// A decoded IDX file of unsigned bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    /// Sizes of each dimension, outermost first.
    pub dims: Vec<usize>,
    /// Row-major data, `dims.iter().product()` bytes.
    pub data: Vec<u8>,
}

/// Reads `stem` or `stem.gz` from `dir`, whichever exists (plain first).
pub fn read_idx(dir: &Path, stem: &str) -> Result<IdxArray, DataError> {
    let plain = dir.join(stem);
    let gz = dir.join(format!("{stem}.gz"));
    let (path, compressed) = if plain.is_file() {
        (plain, false)
    } else if gz.is_file() {
        (gz, true)
    } else {
        return Err(DataError::Missing { path: gz, dir: dir.to_path_buf() });
    };
    let io = |source| DataError::Io { path: path.clone(), source };
    let raw = std::fs::read(&path).map_err(io)?;
    let bytes = if compressed {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice()).read_to_end(&mut out).map_err(io)?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).map_err(|reason| DataError::Format { path: PathBuf::from(&path), reason })
}

/// Parses IDX bytes, rejecting anything inconsistent before allocating.
pub fn parse_idx(bytes: &[u8]) -> Result<IdxArray, String> {
    let header = bytes.get(..4).ok_or("shorter than the 4-byte magic number")?;
    if header[0] != 0 || header[1] != 0 {
        return Err("bad magic number: not an IDX file".into());
    }
    if header[2] != TYPE_U8 {
        return Err(format!("element type 0x{:02x} is not supported (only unsigned bytes, 0x08)", header[2]));
    }
    let ndims = header[3] as usize;
    let dims_end = 4 + 4 * ndims;
    let dims_bytes = bytes.get(4..dims_end).ok_or("truncated in the dimension sizes")?;
    let dims: Vec<usize> =
        dims_bytes.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let len = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or("dimension sizes overflow")?;
    let data = &bytes[dims_end..];
    if data.len() != len {
        return Err(format!("holds {} data bytes, its header promises {len}", data.len()));
    }
    Ok(IdxArray { dims, data: data.to_vec() })
}

/// Encodes an IDX file of unsigned bytes (used by tests and tools to make small data sets).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, TYPE_U8, dims.len() as u8];
    for &d in dims {
        out.extend((d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_encode() {
        let a = parse_idx(&encode_idx(&[2, 3], &[1, 2, 3, 4, 5, 6])).unwrap();
        assert_eq!(a, IdxArray { dims: vec![2, 3], data: vec![1, 2, 3, 4, 5, 6] });
    }

    #[test]
    fn rejects_truncated_file() {
        let mut bytes = encode_idx(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        bytes.pop();
        assert!(parse_idx(&bytes).unwrap_err().contains("promises 6"));
    }

    #[test]
    fn rejects_oversized_header_without_allocating() {
        let bytes = encode_idx(&[u32::MAX as usize, u32::MAX as usize, u32::MAX as usize], &[]);
        assert!(parse_idx(&bytes).is_err());
    }

    #[test]
    fn rejects_other_element_types() {
        assert!(parse_idx(&[0, 0, 0x0D, 1, 0, 0, 0, 0]).unwrap_err().contains("0x0d"));
    }
}

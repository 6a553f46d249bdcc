//! Reader for the IDX format of (Fashion-)MNIST, plain or gzipped.
//!
//! Layout (big-endian): two zero bytes, a type byte (0x08 = unsigned byte, the only one
//! these data sets use), the number of dimensions `d`, then `d` u32 sizes, then the data.
//!
//! The file is read as a stream, header first: the header says how many data bytes follow,
//! that size is checked (overflow, free host memory) before anything is allocated, and then
//! exactly that many bytes are read. A stream that ends early, or holds even one byte more,
//! is refused; so a small `.gz` that inflates to gigabytes (a "gzip bomb") costs no more
//! than its header promises.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::error::DataError;

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

/// Why an IDX stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdxReadError {
    /// The stream failed (including a corrupt gzip stream).
    #[error("{0}")]
    Io(std::io::Error),
    /// The bytes are not a well-formed IDX file.
    #[error("{0}")]
    Format(String),
    /// The header promises more data than the host has memory for.
    #[error("promises {bytes} data bytes, more than fit in memory")]
    TooLarge {
        /// Data bytes the header promises.
        bytes: u64,
        /// Host memory available.
        available: u64,
    },
}

/// Bytes of host memory one data byte of an IDX file costs once loaded: the byte itself,
/// libtorch's copy of it, and the float32 tensor made from that copy.
pub const HOST_BYTES_PER_DATA_BYTE: u64 = 1 + 1 + 4;

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
    let file = std::fs::File::open(&path).map_err(|source| DataError::Io { path: path.clone(), source })?;
    let file = std::io::BufReader::new(file);
    let host = crate::memory::probe::host();
    let available = host.available;
    let read = if compressed {
        // Multi-member: `cat a.gz b.gz` is a valid gzip file, and gzip(1) reads all of it.
        read_idx_stream(flate2::bufread::MultiGzDecoder::new(file), available)
    } else {
        read_idx_stream(file, available)
    };
    read.map_err(|e| match e {
        IdxReadError::Io(source) => DataError::Io { path: path.clone(), source },
        IdxReadError::Format(reason) => DataError::Format { path: PathBuf::from(&path), reason },
        IdxReadError::TooLarge { bytes, available } => DataError::TooLarge {
            path: path.clone(),
            needed: bytes.saturating_mul(HOST_BYTES_PER_DATA_BYTE),
            available,
            from: host.available_from(),
        },
    })
}

/// Reads one IDX file from `stream`: the header, then exactly the data bytes it promises.
/// With `available` (host memory), a header promising more than fits is refused before
/// anything is allocated.
pub fn read_idx_stream(mut stream: impl Read, available: Option<u64>) -> Result<IdxArray, IdxReadError> {
    let format = |reason: String| IdxReadError::Format(reason);
    let mut header = [0u8; 4];
    if !read_full(&mut stream, &mut header)? {
        return Err(format("shorter than the 4-byte magic number".into()));
    }
    if header[0] != 0 || header[1] != 0 {
        return Err(format("bad magic number: not an IDX file".into()));
    }
    if header[2] != TYPE_U8 {
        return Err(format(format!("element type 0x{:02x} is not supported (only unsigned bytes, 0x08)", header[2])));
    }
    let mut dims_bytes = vec![0u8; 4 * header[3] as usize];
    if !read_full(&mut stream, &mut dims_bytes)? {
        return Err(format("truncated in the dimension sizes".into()));
    }
    let dims: Vec<usize> =
        dims_bytes.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let len = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&l| usize::try_from(l).is_ok())
        .ok_or_else(|| format(format!("dimension sizes {dims:?} overflow")))?;
    if let Some(available) = available {
        if len.saturating_mul(HOST_BYTES_PER_DATA_BYTE) > available {
            return Err(IdxReadError::TooLarge { bytes: len, available });
        }
    }
    let mut data = Vec::new();
    data.try_reserve_exact(len as usize)
        .map_err(|_| IdxReadError::TooLarge { bytes: len, available: available.unwrap_or(0) })?;
    let got = (&mut stream).take(len).read_to_end(&mut data).map_err(IdxReadError::Io)?;
    if (got as u64) < len {
        return Err(format(format!("holds {got} data bytes, its header promises {len}")));
    }
    let mut extra = [0u8; 1];
    if read_full(&mut stream, &mut extra)? {
        return Err(format(format!("holds more data than the {len} bytes its header promises")));
    }
    Ok(IdxArray { dims, data })
}

/// Fills `buf` from `stream`: `true` when filled, `false` when the stream ended first.
fn read_full(stream: &mut impl Read, buf: &mut [u8]) -> Result<bool, IdxReadError> {
    match stream.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(IdxReadError::Io(e)),
    }
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

    /// IDX bytes held in memory, parsed; the error as its message.
    fn parse_idx(bytes: &[u8]) -> Result<IdxArray, String> {
        read_idx_stream(bytes, None).map_err(|e| e.to_string())
    }

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

    /// A reader that counts the bytes taken from it.
    struct Counting<R> {
        inner: R,
        taken: u64,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.taken += n as u64;
            Ok(n)
        }
    }

    #[test]
    fn an_endless_stream_is_refused_after_reading_only_what_its_header_promises() {
        // A header promising 2x3 bytes, then zeros without end: what a gzip bomb inflates to.
        let header = encode_idx(&[2, 3], &[]);
        let mut stream = Counting { inner: header.as_slice().chain(std::io::repeat(0)), taken: 0 };
        let err = match read_idx_stream(&mut stream, None) {
            Err(IdxReadError::Format(reason)) => reason,
            other => panic!("unexpected {other:?}"),
        };
        assert!(err.contains("more data than the 6 bytes its header promises"), "{err}");
        assert!(stream.taken <= header.len() as u64 + 6 + 1, "read {} bytes", stream.taken);
    }

    #[test]
    fn a_gzip_bomb_is_refused_without_inflating_it() {
        use std::io::Write;
        // 64 MiB of zeros behind a header promising 784 bytes: about 64 KiB compressed.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&encode_idx(&[1, 28, 28], &[])).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            gz.write_all(&zeros).unwrap();
        }
        let bytes = gz.finish().unwrap();
        let mut stream = Counting { inner: flate2::read::MultiGzDecoder::new(bytes.as_slice()), taken: 0 };
        assert!(matches!(read_idx_stream(&mut stream, None), Err(IdxReadError::Format(r)) if r.contains("more data")));
        assert!(stream.taken < 1 << 20, "inflated {} bytes", stream.taken);
    }

    #[test]
    fn a_header_promising_more_than_the_host_has_is_refused_before_allocating() {
        let bytes = encode_idx(&[60000, 28, 28], &[]);
        match read_idx_stream(bytes.as_slice(), Some(1 << 20)) {
            Err(IdxReadError::TooLarge { bytes, available }) => assert_eq!((bytes, available), (60000 * 784, 1 << 20)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_other_element_types() {
        assert!(parse_idx(&[0, 0, 0x0D, 1, 0, 0, 0, 0]).unwrap_err().contains("0x0d"));
    }
}

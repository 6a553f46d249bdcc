//! The streaming writer: each tensor's chunks are compressed (in parallel) and written as soon
//! as it is added; the index and trailer follow at [`Writer::finish`].

use std::collections::{BTreeMap, HashSet};
use std::io::Write;

use crate::codec::ChunkEncoder;
use crate::error::{Error, Result};
use crate::format::{
    self, hex64, Encoding, Entry, Index, Trailer, MAX_CHUNK_BYTES, MAX_INDEX_LEN, MAX_RANK, MAX_TENSORS,
};
use crate::parallel::{default_threads, map_with};
use crate::Dtype;

/// Tensors smaller than this are stored as one plane of bytes: below it the fixed cost of a
/// zstd frame per plane (about a dozen bytes) outweighs what splitting gains.
const SMALL_TENSOR_BYTES: usize = 256;

/// Chunks compressed per thread before their bytes are written: enough to keep every thread
/// busy, few enough that the writer holds only a few MiB beyond the caller's tensor.
const CHUNKS_PER_THREAD: usize = 4;

/// How a [`Writer`] works. The defaults suit checkpoints of any size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterOptions {
    /// Threads that compress; 0 means one per available core.
    pub threads: usize,
    /// Raw bytes per chunk (rounded down to whole elements, at least one element, at most
    /// [`crate::MAX_CHUNK_BYTES`]). Smaller chunks give more parallelism on small tensors and
    /// less memory; 1 MiB loses under 0.1% of ratio to larger ones.
    pub chunk_bytes: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions { threads: 0, chunk_bytes: 1 << 20 }
    }
}

/// Writes a checkpoint to `W`, one tensor at a time.
///
/// ```
/// # fn main() -> Result<(), train_ckpt::Error> {
/// use train_ckpt::{Dtype, Reader, Writer};
/// let mut w = Writer::new(Vec::new())?;
/// w.add_tensor("w", Dtype::F32, &[2], &[0, 0, 128, 63, 0, 0, 0, 64])?;
/// let bytes = w.finish(Default::default())?;
/// let mut r = Reader::new(std::io::Cursor::new(bytes))?;
/// assert_eq!(r.read_tensor("w")?, [0, 0, 128, 63, 0, 0, 0, 64]);
/// # Ok(()) }
/// ```
///
/// After an error the file is incomplete (it has no trailer, so readers refuse it): drop the
/// writer and start again.
pub struct Writer<W: Write> {
    w: W,
    pos: u64,
    entries: Vec<Entry>,
    names: HashSet<String>,
    encoders: Vec<ChunkEncoder>,
    chunk_bytes: usize,
}

impl<W: Write> Writer<W> {
    /// Starts a file with the default options, writing its 16-byte header.
    pub fn new(w: W) -> Result<Self> {
        Self::with_options(w, WriterOptions::default())
    }

    /// Starts a file, writing its 16-byte header.
    pub fn with_options(mut w: W, options: WriterOptions) -> Result<Self> {
        let threads = match options.threads {
            0 => default_threads(),
            n => n,
        };
        let encoders = (0..threads).map(|_| ChunkEncoder::new()).collect::<Result<_, _>>()?;
        w.write_all(&format::header())?;
        Ok(Writer {
            w,
            pos: format::HEADER_LEN,
            entries: Vec::new(),
            names: HashSet::new(),
            encoders,
            chunk_bytes: options.chunk_bytes,
        })
    }

    /// Compresses a tensor and writes it. `data` holds its elements in row-major order,
    /// little-endian, `dtype.size()` bytes each (the safetensors layout).
    pub fn add_tensor(&mut self, name: &str, dtype: Dtype, shape: &[usize], data: &[u8]) -> Result<()> {
        if self.names.contains(name) {
            return Err(Error::DuplicateName { name: name.into() });
        }
        if self.entries.len() >= MAX_TENSORS {
            return Err(Error::TooManyTensors { count: self.entries.len() + 1, max: MAX_TENSORS });
        }
        if shape.len() > MAX_RANK {
            return Err(crate::error::invalid(name, format!("rank {} exceeds the limit of {MAX_RANK}", shape.len())));
        }
        let size = dtype.size();
        let expected = shape
            .iter()
            .try_fold(size, |n, &d| n.checked_mul(d))
            .ok_or_else(|| crate::error::invalid(name, format!("shape {shape:?} overflows")))?;
        if data.len() != expected {
            return Err(Error::LengthMismatch { name: name.into(), expected: expected as u64, got: data.len() as u64 });
        }
        let encoding = if size == 1 || data.len() < SMALL_TENSOR_BYTES {
            Encoding::Bytes
        } else if dtype.is_float() {
            Encoding::FloatPlanes
        } else {
            Encoding::Planes
        };
        let row = encoding.row_len(dtype, shape.last().map_or(1, |&d| d as u64)) as usize;
        let chunk_elems = (self.chunk_bytes / size).clamp(1, MAX_CHUNK_BYTES as usize / size);
        let offset = self.pos;
        let mut chunks = Vec::with_capacity(data.len().div_ceil(chunk_elems * size));
        let window = self.encoders.len() * CHUNKS_PER_THREAD;
        let pieces: Vec<&[u8]> = data.chunks(chunk_elems * size).collect();
        for group in pieces.chunks(window) {
            let encoded = map_with(&mut self.encoders, group.to_vec(), |enc, piece| {
                let mut out = Vec::with_capacity(piece.len());
                let planes = enc.encode(encoding, dtype, row, piece, &mut out)?;
                Ok::<_, std::io::Error>((planes, out))
            });
            for result in encoded {
                let (planes, bytes) = result.map_err(|source| Error::Compress { name: name.into(), source })?;
                self.w.write_all(&bytes)?;
                self.pos += bytes.len() as u64;
                chunks.push(planes);
            }
        }
        self.names.insert(name.to_owned());
        self.entries.push(Entry {
            name: name.to_owned(),
            dtype,
            shape: shape.iter().map(|&d| d as u64).collect(),
            encoding,
            offset,
            stored_len: self.pos - offset,
            raw_len: data.len() as u64,
            xxh3: hex64(xxhash_rust::xxh3::xxh3_64(data)),
            chunk_elems: chunk_elems as u64,
            chunks,
        });
        Ok(())
    }

    /// Writes the index (holding `metadata`) and the trailer, flushes, and returns the
    /// underlying writer. Syncing a file to disk is the caller's business.
    pub fn finish(mut self, metadata: BTreeMap<String, String>) -> Result<W> {
        let index = serde_json::to_vec(&Index { metadata, tensors: std::mem::take(&mut self.entries) })?;
        if index.len() as u64 > MAX_INDEX_LEN {
            return Err(Error::IndexTooLarge { len: index.len() as u64, max: MAX_INDEX_LEN });
        }
        let trailer = Trailer {
            index_offset: self.pos,
            index_len: index.len() as u64,
            index_xxh3: xxhash_rust::xxh3::xxh3_64(&index),
        };
        self.w.write_all(&index)?;
        self.w.write_all(&trailer.to_bytes())?;
        self.w.flush()?;
        Ok(self.w)
    }
}

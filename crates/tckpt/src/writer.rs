//! The streaming writer: tensors' chunks are compressed in parallel and written in order; the
//! index and trailer follow at [`Writer::finish`].
//!
//! Work is shared out by chunk, not by tensor: a tensor of many chunks is spread over every
//! thread, and tensors smaller than a chunk are gathered (copied) into a batch that is coded
//! on every thread at once when it is large enough, when a large tensor comes, or at
//! [`Writer::finish`]. Each chunk's checksum is taken on the thread that codes it, while its
//! bytes are in that core's cache.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;

use crate::codec::ChunkEncoder;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::layout::{
    self, hex64, Encoding, Entry, Index, PlaneEntry, Trailer, MAX_CHUNK_BYTES, MAX_INDEX_LEN, MAX_RANK, MAX_TENSORS,
};
use crate::parallel::{default_threads, map_with};

/// Tensors smaller than this are stored as one plane of bytes: below it the fixed cost of a
/// zstd frame per plane (about a dozen bytes) outweighs what splitting gains.
const SMALL_TENSOR_BYTES: usize = 256;

/// Chunks compressed per thread before their bytes are written: enough to keep every thread
/// busy, few enough that the writer holds only a few MiB beyond the caller's tensor. Small
/// tensors are batched up to the same number of bytes.
const CHUNKS_PER_THREAD: usize = 4;

/// Chunks smaller than this are handed to threads several at a time (consecutive ones, up to
/// this many raw bytes together), so that a batch of tiny tensors costs one queue operation
/// per 256 KiB rather than one per tensor.
const GROUP_BYTES: usize = 256 << 10;

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
/// # fn main() -> Result<(), tckpt::Error> {
/// use tckpt::{Dtype, Reader, Writer};
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
    /// Tensors smaller than a chunk, copied, waiting to be coded together.
    batch: Vec<(Job, Vec<u8>)>,
    batch_bytes: usize,
    /// Output buffers of the last window, reused: a fresh buffer per chunk costs a page fault
    /// per 4 KiB written (a fifth of the coding time, measured).
    spare: Vec<Vec<u8>>,
}

/// One tensor to code: everything its entry says but where it lands and how it was stored.
struct Job {
    name: String,
    dtype: Dtype,
    shape: Vec<u64>,
    encoding: Encoding,
    row: usize,
    chunk_elems: usize,
}

/// Consecutive chunks (their job and bytes) coded by one thread, and the buffer their stored
/// bytes go to.
type Group<'a> = (Vec<(usize, &'a [u8])>, Vec<u8>);

/// One chunk's output: its job, its checksum, its planes' entries and where its stored bytes
/// are in its group's buffer.
type Coded = (usize, u64, Vec<PlaneEntry>, std::ops::Range<usize>);

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
        w.write_all(&layout::header())?;
        Ok(Writer {
            w,
            pos: layout::HEADER_LEN,
            entries: Vec::new(),
            names: HashSet::new(),
            encoders,
            chunk_bytes: options.chunk_bytes,
            batch: Vec::new(),
            batch_bytes: 0,
            spare: Vec::new(),
        })
    }

    /// Compresses a tensor and writes it. `data` holds its elements in row-major order,
    /// little-endian, `dtype.size()` bytes each (the safetensors layout).
    ///
    /// A tensor smaller than a chunk is copied into a batch and coded with the tensors after
    /// it, so an error coding it (out of memory, in practice) may be reported by a later call
    /// or by [`Writer::finish`]. Errors about the tensor itself (its name, shape or length)
    /// are always reported by this call.
    pub fn add_tensor(&mut self, name: &str, dtype: Dtype, shape: &[usize], data: &[u8]) -> Result<()> {
        if self.names.contains(name) {
            return Err(Error::DuplicateName { name: name.into() });
        }
        if self.entries.len() + self.batch.len() >= MAX_TENSORS {
            return Err(Error::TooManyTensors { count: self.entries.len() + self.batch.len() + 1, max: MAX_TENSORS });
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
        let mut chunk_elems = (self.chunk_bytes / size).clamp(1, MAX_CHUNK_BYTES as usize / size);
        // Chunks of whole rows when a row fits in one, so that every chunk's planes start at
        // a row's start: a rank-one prediction (per column of a chunk) then lines up with the
        // tensor's columns.
        let last = shape.last().copied().unwrap_or(1);
        if data.len() > chunk_elems * size && (1..=chunk_elems).contains(&last) {
            chunk_elems -= chunk_elems % last;
        }
        let job = Job {
            name: name.to_owned(),
            dtype,
            shape: shape.iter().map(|&d| d as u64).collect(),
            encoding,
            row,
            chunk_elems,
        };
        self.names.insert(name.to_owned());
        if data.len() < chunk_elems * size {
            self.batch.push((job, data.to_vec()));
            self.batch_bytes += data.len();
            if self.batch_bytes >= self.window_bytes() {
                self.flush_batch()?;
            }
            return Ok(());
        }
        self.flush_batch()?;
        self.code(&[(job, data)])
    }

    /// Writes the index (holding `metadata`) and the trailer, flushes, and returns the
    /// underlying writer. Syncing a file to disk is the caller's business.
    pub fn finish(mut self, metadata: BTreeMap<String, String>) -> Result<W> {
        self.flush_batch()?;
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

    /// Raw bytes coded per window: `CHUNKS_PER_THREAD` chunks for each thread.
    fn window_bytes(&self) -> usize {
        self.encoders.len() * CHUNKS_PER_THREAD * self.chunk_bytes.max(1)
    }

    fn flush_batch(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.code(&batch)
    }

    /// Codes the tensors' chunks a window at a time on every thread and writes them in order;
    /// adds each tensor's entry.
    fn code<D: AsRef<[u8]> + Sync>(&mut self, jobs: &[(Job, D)]) -> Result<()> {
        // Every chunk, in file order: (job, its bytes).
        let mut pieces = jobs.iter().enumerate().flat_map(|(j, (job, data))| {
            data.as_ref().chunks(job.chunk_elems * job.dtype.size()).map(move |piece| (j, piece))
        });
        let window_bytes = self.window_bytes();
        let mut coded: Vec<(Vec<u64>, Vec<Vec<PlaneEntry>>, u64)> =
            jobs.iter().map(|_| (Vec::new(), Vec::new(), 0)).collect();
        let start = self.pos;
        let mut next = pieces.next();
        while next.is_some() {
            // A window of whole chunks, in groups of consecutive small ones.
            let mut groups: Vec<Group<'_>> = Vec::new();
            let (mut total, mut group_bytes) = (0usize, 0usize);
            while let Some((j, piece)) = next {
                if total > 0 && total + piece.len() > window_bytes {
                    break;
                }
                if groups.is_empty() || group_bytes + piece.len() > GROUP_BYTES {
                    groups.push((Vec::new(), self.spare.pop().unwrap_or_default()));
                    group_bytes = 0;
                }
                groups.last_mut().expect("a group").0.push((j, piece));
                group_bytes += piece.len();
                total += piece.len();
                next = pieces.next();
            }
            let results = map_with(&mut self.encoders, groups, |enc, (group, mut out)| {
                out.clear();
                let coded = group
                    .into_iter()
                    .map(|(j, piece)| {
                        let job = &jobs[j].0;
                        let start = out.len();
                        let planes = enc
                            .encode(job.encoding, job.dtype, job.row, piece, &mut out)
                            .map_err(|source| Error::Compress { name: job.name.clone(), source })?;
                        Ok((j, xxhash_rust::xxh3::xxh3_64(piece), planes, start..out.len()))
                    })
                    .collect::<Result<Vec<Coded>>>();
                (coded, out)
            });
            for (group, out) in results {
                for (j, sum, planes, range) in group? {
                    self.w.write_all(&out[range.clone()])?;
                    self.pos += range.len() as u64;
                    coded[j].0.push(sum);
                    coded[j].1.push(planes);
                    coded[j].2 += range.len() as u64;
                }
                self.spare.push(out);
            }
        }
        // Records follow each other in job order; an empty tensor's is empty.
        let mut offset = start;
        for ((job, data), (sums, chunks, stored)) in jobs.iter().zip(coded) {
            self.entries.push(Entry {
                name: job.name.clone(),
                dtype: job.dtype,
                shape: job.shape.clone(),
                encoding: job.encoding,
                offset,
                stored_len: stored,
                raw_len: data.as_ref().len() as u64,
                xxh3: None,
                chunk_elems: job.chunk_elems as u64,
                chunk_xxh3: Some(sums.into_iter().map(hex64).collect()),
                chunks,
            });
            offset += stored;
        }
        Ok(())
    }
}

//! The reader: loads the trailer and index only, then decodes one tensor at a time, a window
//! of chunks at a time, verifying each tensor's checksum.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};

use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};

use crate::codec::ChunkDecoder;
use crate::error::{Error, Result};
use crate::format::{self, Index, Layout, TensorInfo, Trailer, HEADER_LEN, TRAILER_LEN};
use crate::parallel::{default_threads, map_with};

/// Chunks read and decoded per thread at a time: keeps both cores busy while the reader
/// holds only a few chunks' worth of compressed bytes.
const CHUNKS_PER_THREAD: usize = 4;

/// Compression ratio up to which `read_tensor` allocates a tensor's whole length up front.
/// Real checkpoints compress 1.1-2x; only constant tensors compress more.
const PLAUSIBLE_RATIO: u64 = 16;

/// Reads a checkpoint from any seekable source (a file, a cursor over bytes).
///
/// Opening reads only the header, the trailer and the index, validated before use; tensors
/// are read on request, so memory stays at one tensor (or, for [`Reader::verify`], a few
/// chunks) whatever the file's size. Nothing a file contains can make the reader panic or
/// allocate more than the file's own numbers, checked against its length, allow.
pub struct Reader<R> {
    r: R,
    metadata: BTreeMap<String, String>,
    infos: Vec<TensorInfo>,
    layouts: Vec<Layout>,
    by_name: HashMap<String, usize>,
    decoders: Vec<ChunkDecoder>,
    buf: Vec<u8>,
}

impl<R: Read + Seek> Reader<R> {
    /// Opens a file, decoding with one thread per available core.
    pub fn new(r: R) -> Result<Self> {
        Self::with_threads(r, 0)
    }

    /// Opens a file, decoding with `threads` threads (0: one per available core).
    pub fn with_threads(mut r: R, threads: usize) -> Result<Self> {
        let file_len = r.seek(SeekFrom::End(0))?;
        let mut header = [0u8; HEADER_LEN as usize];
        let head = read_at(&mut r, 0, &mut header[..file_len.min(HEADER_LEN) as usize]);
        if file_len < HEADER_LEN {
            head?;
            return Err(if format::is_ckpt(&header[..file_len as usize]) || file_len < 8 {
                Error::Truncated { len: file_len, need: HEADER_LEN + TRAILER_LEN }
            } else {
                Error::NotACheckpoint
            });
        }
        head?;
        format::check_header(&header)?;
        if file_len < HEADER_LEN + TRAILER_LEN {
            return Err(Error::Truncated { len: file_len, need: HEADER_LEN + TRAILER_LEN });
        }
        let mut trailer = [0u8; TRAILER_LEN as usize];
        read_at(&mut r, file_len - TRAILER_LEN, &mut trailer)?;
        let trailer = Trailer::parse(&trailer, file_len)?;
        // index_len <= MAX_INDEX_LEN and lies inside the file: Trailer::parse checked both.
        let mut index = vec![0u8; trailer.index_len as usize];
        read_at(&mut r, trailer.index_offset, &mut index)?;
        let found = xxh3_64(&index);
        if found != trailer.index_xxh3 {
            return Err(Error::IndexChecksum { expected: trailer.index_xxh3, found });
        }
        let index: Index = serde_json::from_slice(&index)?;
        let metadata = index.metadata.clone();
        let (infos, layouts) = format::validate(index, trailer.index_offset)?;
        let by_name = infos.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        let threads = if threads == 0 { default_threads() } else { threads };
        let decoders = (0..threads).map(|_| ChunkDecoder::new()).collect::<Result<_, _>>()?;
        Ok(Reader { r, metadata, infos, layouts, by_name, decoders, buf: Vec::new() })
    }

    /// The string pairs the writer stored.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Every tensor, in file order (reading in this order reads the file front to back).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.infos
    }

    /// The tensor of that name, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.infos[i])
    }

    /// Decodes a tensor and verifies its checksum.
    pub fn read_tensor(&mut self, name: &str) -> Result<Vec<u8>> {
        let i = self.position(name)?;
        // Reserve the whole tensor unless it claims to expand more than checkpoints do; then
        // the buffer grows as chunks decode, so a lying file cannot make the reader allocate
        // more than its real bytes decode to.
        let info = &self.infos[i];
        let mut out = Vec::with_capacity(info.raw_len.min(info.stored_len.saturating_mul(PLAUSIBLE_RATIO)) as usize);
        let mut hasher = Xxh3Default::new();
        self.decode(i, |window_len, fill| {
            let start = out.len();
            out.resize(start + window_len, 0);
            fill(&mut out[start..])?;
            hasher.update(&out[start..]);
            Ok(())
        })?;
        self.check(i, hasher.digest())?;
        Ok(out)
    }

    /// Decodes a tensor into `out`, which must be exactly its raw length, and verifies its
    /// checksum. On error `out` holds partial data.
    pub fn read_tensor_into(&mut self, name: &str, out: &mut [u8]) -> Result<()> {
        let i = self.position(name)?;
        if out.len() as u64 != self.infos[i].raw_len {
            return Err(Error::LengthMismatch {
                name: name.into(),
                expected: self.infos[i].raw_len,
                got: out.len() as u64,
            });
        }
        let mut at = 0;
        self.decode(i, |window_len, fill| {
            fill(&mut out[at..at + window_len])?;
            at += window_len;
            Ok(())
        })?;
        self.check(i, xxh3_64(out))
    }

    /// Decodes every tensor and checks every checksum, holding a few chunks at a time.
    pub fn verify(&mut self) -> Result<()> {
        let mut scratch = Vec::new();
        for i in 0..self.infos.len() {
            let mut hasher = Xxh3Default::new();
            self.decode(i, |window_len, fill| {
                scratch.resize(window_len, 0);
                fill(&mut scratch)?;
                hasher.update(&scratch);
                Ok(())
            })?;
            self.check(i, hasher.digest())?;
        }
        Ok(())
    }

    /// Gives back the underlying source.
    pub fn into_inner(self) -> R {
        self.r
    }

    fn position(&self, name: &str) -> Result<usize> {
        self.by_name.get(name).copied().ok_or_else(|| Error::TensorNotFound { name: name.into() })
    }

    fn check(&self, i: usize, found: u64) -> Result<()> {
        let expected = self.layouts[i].xxh3;
        if found != expected {
            return Err(Error::ChecksumMismatch { name: self.infos[i].name.clone(), expected, found });
        }
        Ok(())
    }

    /// Decodes tensor `i` a window of chunks at a time. For each window, `sink` gets the
    /// window's raw length and a function that decodes the window into a slice of that length.
    fn decode<S>(&mut self, i: usize, mut sink: S) -> Result<()>
    where
        S: FnMut(usize, &mut dyn FnMut(&mut [u8]) -> Result<()>) -> Result<()>,
    {
        let Reader { r, infos, layouts, decoders, buf, .. } = self;
        let (info, layout) = (&infos[i], &layouts[i]);
        let elem = info.dtype.size() as u64;
        let numel = info.raw_len / elem;
        let window = decoders.len() * CHUNKS_PER_THREAD;
        let mut offset = layout.offset;
        for first in (0..layout.chunks.len()).step_by(window) {
            let chunks = &layout.chunks[first..(first + window).min(layout.chunks.len())];
            // All numbers below were validated against the file's length and each other.
            let stored: Vec<usize> = chunks.iter().map(|planes| planes.iter().map(|p| p.1 as usize).sum()).collect();
            let raw: Vec<usize> = (first..first + chunks.len())
                .map(|c| (layout.chunk_elems.min(numel - c as u64 * layout.chunk_elems) * elem) as usize)
                .collect();
            buf.resize(stored.iter().sum(), 0);
            read_at(r, offset, buf)?;
            let window_offset = offset;
            offset += buf.len() as u64;
            let mut fill = |out: &mut [u8]| -> Result<()> {
                let mut items = Vec::with_capacity(chunks.len());
                let (mut src, mut dst) = (&buf[..], out);
                for (k, planes) in chunks.iter().enumerate() {
                    let (s, rest) = src.split_at(stored[k]);
                    let (d, more) = std::mem::take(&mut dst).split_at_mut(raw[k]);
                    items.push((k, planes.as_slice(), s, d));
                    (src, dst) = (rest, more);
                }
                let results = map_with(decoders, items, |dec, (k, planes, s, d)| {
                    dec.decode(layout.encoding, info.dtype, layout.row, planes, s, d).map_err(|e| (k, e))
                });
                for result in results {
                    if let Err((k, e)) = result {
                        let before: usize = stored[..k].iter().sum();
                        return Err(Error::Corrupt {
                            name: info.name.clone(),
                            chunk: first + k,
                            plane: e.plane,
                            offset: window_offset + before as u64 + e.offset,
                            reason: e.reason,
                        });
                    }
                }
                Ok(())
            };
            sink(raw.iter().sum(), &mut fill)?;
        }
        Ok(())
    }
}

/// Reads exactly `buf.len()` bytes at `offset`.
fn read_at<R: Read + Seek>(r: &mut R, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    r.seek(SeekFrom::Start(offset))?;
    r.read_exact(buf)
}

//! The reader: loads the trailer and index only, then decodes tensors on request, a window of
//! chunks at a time, on every thread it is given, verifying every checksum.
//!
//! Decoding works on chunks, whichever tensors they belong to: [`Reader::read_tensors_into`]
//! lays the chunks of all the tensors asked for out in file order, reads a window of their
//! stored bytes with one read per contiguous run, and decodes the window's chunks in parallel
//! straight into the caller's buffers. A version-2 chunk is checked against its own checksum
//! by the thread that decoded it, while its bytes are still in that core's cache; a version-1
//! tensor (one checksum for the whole tensor) is hashed in order after each window.
//!
//! A reader made with [`Reader::from_file`] does not read a window into a buffer: it maps the
//! window's bytes and the decoding threads read them straight from the page cache, so nothing
//! is copied before decoding; and the kernel is asked to read the next 32 MiB of the file
//! ahead (`posix_fadvise`), so on a cold cache the disk reads while the threads decode:
//! reading and decoding overlap instead of taking turns.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;

use memmap2::{Mmap, MmapOptions};

use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};

use crate::codec::ChunkDecoder;
use crate::error::{Error, Result};
use crate::layout::{self, Checksum, Index, Layout, TensorInfo, Trailer, HEADER_LEN, TRAILER_LEN};
use crate::parallel::{default_threads, map_with};
use crate::window::{self, WindowChunk, Windows};

/// Stored bytes read and decoded per thread at a time: four chunks at the writer's default
/// size. Enough work per window (a few milliseconds) that starting the window's threads costs
/// little and one slow chunk leaves the other threads idle briefly; small enough that a reader
/// holds a few MiB beyond the caller's buffers.
const WINDOW_BYTES_PER_THREAD: usize = 4 << 20;

/// File bytes the kernel is asked to read ahead of the window being decoded, when windows are
/// mapped. Pages read ahead sit in the page cache, not in this process's memory (a mapped
/// window's pages count as its resident memory while it is decoded, so windows stay as small
/// as read windows); reading this far ahead keeps a disk busy while windows decode.
const READ_AHEAD_BYTES: u64 = 32 << 20;

/// Compression ratio up to which `read_tensor` allocates a tensor's whole length up front.
/// Real checkpoints compress 1.1-2x; only constant tensors compress more.
const PLAUSIBLE_RATIO: u64 = 16;

/// Reads a checkpoint from any seekable source (a file, a cursor over bytes).
///
/// Opening reads only the header, the trailer and the index, validated before use; tensors
/// are read on request, so memory stays at the caller's buffers and a few chunks (or, for
/// [`Reader::verify`], a few chunks only) whatever the file's size. Nothing a file contains can
/// make the reader panic or allocate more than the file's own numbers, checked against its
/// length, allow.
pub struct Reader<R> {
    r: R,
    /// The same file, when the reader maps windows of it instead of reading them
    /// ([`Reader::from_file`]).
    mapped: Option<File>,
    metadata: BTreeMap<String, String>,
    infos: Vec<TensorInfo>,
    layouts: Vec<Layout>,
    by_name: HashMap<String, usize>,
    decoders: Vec<ChunkDecoder>,
    buf: Vec<u8>,
}

/// One chunk to decode: which, where its stored bytes lie in the window buffer, and where its
/// raw bytes go.
struct Unit<'d> {
    tensor: usize,
    chunk: usize,
    file_offset: u64,
    stored: Range<usize>,
    dest: &'d mut [u8],
}

/// Where decoded chunks go.
enum Dest<'d> {
    /// The caller's buffers, one per tensor asked for, each exactly the tensor's raw length.
    Buffers(Vec<&'d mut [u8]>),
    /// A scratch window that each window's chunks overwrite.
    Scratch,
}

impl Reader<File> {
    /// Opens a file, decoding with `threads` threads (0: one per available core) straight from
    /// the file's pages: each window of stored bytes is mapped rather than read into a buffer,
    /// and the kernel is asked to read the next 32 MiB ahead while this window decodes. On a file in the
    /// page cache this saves copying the stored bytes; on a cold one, reading overlaps decoding.
    /// A window that cannot be mapped (a file system without `mmap`) is read as
    /// [`Reader::with_threads`] reads it.
    ///
    /// The file must not be truncated while a read is in progress: touching a mapped page past
    /// its new end raises SIGBUS. Files that are replaced by renaming a new one into place, as
    /// checkpoints are, are safe; so is deleting or renaming the file.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tckpt::{Dtype, Reader, Writer};
    /// let path = std::env::temp_dir().join(format!("train-ckpt-doc-{}.tckpt", std::process::id()));
    /// let mut w = Writer::new(std::fs::File::create(&path)?)?;
    /// w.add_tensor("w", Dtype::F32, &[2], &[0, 0, 128, 63, 0, 0, 0, 64])?;
    /// w.finish(Default::default())?;
    /// let mut r = Reader::from_file(std::fs::File::open(&path)?, 0)?;
    /// assert_eq!(r.read_tensor("w")?, [0, 0, 128, 63, 0, 0, 0, 64]);
    /// # std::fs::remove_file(&path)?;
    /// # Ok(()) }
    /// ```
    pub fn from_file(file: File, threads: usize) -> Result<Self> {
        let handle = file.try_clone()?;
        let mut reader = Self::with_threads(file, threads)?;
        reader.mapped = Some(handle);
        Ok(reader)
    }
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
            return Err(if layout::is_ckpt(&header[..file_len as usize]) || file_len < 8 {
                Error::Truncated { len: file_len, need: HEADER_LEN + TRAILER_LEN }
            } else {
                Error::NotACheckpoint
            });
        }
        head?;
        let version = layout::check_header(&header)?;
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
        let (infos, layouts) = layout::validate(index, trailer.index_offset, version)?;
        let by_name = infos.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        let threads = if threads == 0 { default_threads() } else { threads };
        let decoders = (0..threads).map(|_| ChunkDecoder::new()).collect::<Result<_, _>>()?;
        Ok(Reader { r, mapped: None, metadata, infos, layouts, by_name, decoders, buf: Vec::new() })
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

    /// Decodes a tensor and verifies its checksums.
    pub fn read_tensor(&mut self, name: &str) -> Result<Vec<u8>> {
        let i = self.position(name)?;
        let info = &self.infos[i];
        if info.raw_len <= info.stored_len.saturating_mul(PLAUSIBLE_RATIO) {
            // raw_len fits in usize: validation checked it.
            let mut out = vec![0u8; info.raw_len as usize];
            self.decode(&[i], Dest::Buffers(vec![&mut out]), |_, _| Ok(()))?;
            return Ok(out);
        }
        // The tensor claims to expand more than checkpoints do: let the buffer grow as chunks
        // decode, so that a lying file cannot make the reader allocate more than its real
        // bytes decode to.
        let mut out = Vec::new();
        self.decode(&[i], Dest::Scratch, |_, bytes| {
            out.extend_from_slice(bytes);
            Ok(())
        })?;
        Ok(out)
    }

    /// Decodes a tensor into `out`, which must be exactly its raw length, and verifies its
    /// checksums. On error `out` holds partial data.
    pub fn read_tensor_into(&mut self, name: &str, out: &mut [u8]) -> Result<()> {
        self.read_tensors_into(&mut [(name, out)])
    }

    /// Decodes several tensors, each into its buffer (exactly the tensor's raw length), and
    /// verifies every checksum. Their chunks are decoded in parallel across tensors as well as
    /// within them, so many small tensors keep every thread as busy as one large one; the file
    /// is read in order whatever the order of `targets`. The first error in file order is
    /// returned, naming its tensor; on error the buffers hold partial data.
    ///
    /// ```
    /// # fn main() -> Result<(), tckpt::Error> {
    /// use tckpt::{Dtype, Reader, Writer};
    /// let mut w = Writer::new(Vec::new())?;
    /// w.add_tensor("a", Dtype::U8, &[3], &[1, 2, 3])?;
    /// w.add_tensor("b", Dtype::I16, &[2], &[4, 0, 5, 0])?;
    /// let mut r = Reader::new(std::io::Cursor::new(w.finish(Default::default())?))?;
    /// let (mut a, mut b) = ([0u8; 3], [0u8; 4]);
    /// r.read_tensors_into(&mut [("b", &mut b[..]), ("a", &mut a[..])])?;
    /// assert_eq!((a, b), ([1, 2, 3], [4, 0, 5, 0]));
    /// # Ok(()) }
    /// ```
    pub fn read_tensors_into(&mut self, targets: &mut [(&str, &mut [u8])]) -> Result<()> {
        let mut order = Vec::with_capacity(targets.len());
        for (name, out) in targets.iter() {
            let i = self.position(name)?;
            let expected = self.infos[i].raw_len;
            if out.len() as u64 != expected {
                return Err(Error::LengthMismatch { name: (*name).into(), expected, got: out.len() as u64 });
            }
            order.push(i);
        }
        let mut paired: Vec<(usize, &mut [u8])> =
            order.into_iter().zip(targets.iter_mut().map(|(_, out)| &mut **out)).collect();
        paired.sort_by_key(|&(i, _)| i);
        let (order, buffers): (Vec<usize>, Vec<&mut [u8]>) = paired.into_iter().unzip();
        self.decode(&order, Dest::Buffers(buffers), |_, _| Ok(()))
    }

    /// Decodes every tensor and checks every checksum, holding a few chunks at a time.
    pub fn verify(&mut self) -> Result<()> {
        let all: Vec<usize> = (0..self.infos.len()).collect();
        self.decode(&all, Dest::Scratch, |_, _| Ok(()))
    }

    /// Decodes the tensors `names` and checks their checksums, holding a few chunks at a
    /// time (as [`Reader::verify`] does every tensor): what a loader checks before it
    /// writes any tensor into place, without a buffer of the largest tensor's size.
    pub fn verify_tensors(&mut self, names: &[&str]) -> Result<()> {
        let mut order = names.iter().map(|n| self.position(n)).collect::<Result<Vec<usize>>>()?;
        order.sort_unstable();
        order.dedup();
        self.decode(&order, Dest::Scratch, |_, _| Ok(()))
    }

    /// Decodes tensor `name` a few chunks at a time, checking every checksum, and copies its
    /// raw bytes `offset .. offset + out.len()` into `out`: a part of a tensor without a
    /// buffer of the whole (the checksums cover whole chunks, so every chunk is decoded).
    pub fn read_range_into(&mut self, name: &str, offset: u64, out: &mut [u8]) -> Result<()> {
        let i = self.position(name)?;
        let end = offset.checked_add(out.len() as u64).filter(|&e| e <= self.infos[i].raw_len);
        let Some(end) = end else {
            let asked = format!("bytes {offset}..+{} asked of a tensor of {}", out.len(), self.infos[i].raw_len);
            return Err(Error::InvalidTensor { name: name.into(), reason: asked });
        };
        let mut at = 0u64;
        self.decode(&[i], Dest::Scratch, |_, bytes| {
            let (lo, hi) = (at.max(offset), (at + bytes.len() as u64).min(end));
            if lo < hi {
                out[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&bytes[(lo - at) as usize..(hi - at) as usize]);
            }
            at += bytes.len() as u64;
            Ok(())
        })
    }

    /// Gives back the underlying source.
    pub fn into_inner(self) -> R {
        self.r
    }

    fn position(&self, name: &str) -> Result<usize> {
        self.by_name.get(name).copied().ok_or_else(|| Error::TensorNotFound { name: name.into() })
    }

    /// Decodes the chunks of `tensors` (positions in the index, distinct, in file order) a
    /// window at a time, into `dest`, checking every checksum; after each window, `each` gets
    /// every chunk's tensor and decoded bytes, in file order. Which chunks go in which window,
    /// and which file ranges each reads, is [`crate::window`]'s plan; this carries it out.
    fn decode<F>(&mut self, tensors: &[usize], dest: Dest<'_>, mut each: F) -> Result<()>
    where
        F: FnMut(usize, &[u8]) -> Result<()>,
    {
        let Reader { r, mapped, infos, layouts, decoders, buf, .. } = self;
        let window_bytes = decoders.len() * WINDOW_BYTES_PER_THREAD;
        // Version-1 tensors are hashed whole, in order, on this thread.
        let mut hashers: Vec<Option<Xxh3Default>> = tensors
            .iter()
            .map(|&i| matches!(layouts[i].checksum, Checksum::Tensor(_)).then(Xxh3Default::new))
            .collect();
        let (mut buffers, mut scratch) = match dest {
            Dest::Buffers(b) => (Some(b), None),
            Dest::Scratch => (None, Some(Vec::new())),
        };
        let mapped = mapped.as_ref();
        // Decoding into scratch, a window's raw bytes are bounded as its stored bytes are.
        let raw_limit = if scratch.is_some() { window_bytes } else { usize::MAX };
        let mut windows =
            Windows::new(window::chunks(tensors, infos, layouts), window_bytes, raw_limit, mapped.is_some());
        // Where the records asked for end, and how far the kernel was asked to read.
        let records_end = tensors.last().map_or(0, |&i| layouts[i].offset + infos[i].stored_len);
        let mut advised = 0u64;
        // The window being decoded and the next, mapped one window ahead so that the kernel
        // reads the next while this one decodes.
        let map = |w: Vec<WindowChunk>| {
            let map = mapped.and_then(|file| map_window(file, &w));
            (w, map)
        };
        let mut next = windows.next().map(map);
        while let Some((window, map_now)) = next.take() {
            if let Some(file) = mapped {
                if let Some(ahead) = window::read_ahead(advised, &window, records_end, READ_AHEAD_BYTES) {
                    will_need(file, ahead.start, ahead.end);
                    advised = ahead.end;
                }
            }
            next = windows.next().map(map);
            // Where each chunk's stored bytes lie in `src`.
            let (src, stored): (&[u8], Vec<Range<usize>>) = match &map_now {
                Some(m) => (&m[..], window::mapped_ranges(&window)),
                None => {
                    let plan = window::read_plan(&window);
                    buf.resize(plan.len, 0);
                    for (at, range) in plan.reads {
                        read_at(r, at, &mut buf[range])?;
                    }
                    (&buf[..], plan.stored)
                }
            };
            let raw_total = window.last().map_or(0, |w| w.raw.end);
            let mut scratch_window = scratch.as_mut().map(|s: &mut Vec<u8>| {
                s.resize(raw_total, 0);
                &mut s[..]
            });
            let units: Vec<Unit<'_>> = window
                .iter()
                .zip(stored)
                .map(|(w, stored)| {
                    let dest = match (&mut buffers, &mut scratch_window) {
                        (Some(b), _) => take_front(&mut b[w.k], w.raw.len()),
                        (None, Some(s)) => take_front(s, w.raw.len()),
                        (None, None) => unreachable!("one destination"),
                    };
                    Unit { tensor: tensors[w.k], chunk: w.chunk, file_offset: w.at, stored, dest }
                })
                .collect();
            let decoded = decode_units(decoders, infos, layouts, src, units)?;
            for (w, bytes) in window.iter().zip(decoded) {
                if let Some(h) = &mut hashers[w.k] {
                    h.update(bytes);
                }
                each(tensors[w.k], bytes)?;
            }
        }
        for (k, hasher) in hashers.iter().enumerate() {
            if let (Some(h), Checksum::Tensor(expected)) = (hasher, &layouts[tensors[k]].checksum) {
                let found = h.digest();
                if found != *expected {
                    return Err(Error::ChecksumMismatch {
                        name: infos[tensors[k]].name.clone(),
                        expected: *expected,
                        found,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The first `len` bytes of `*rest`, which keeps the bytes after them.
fn take_front<'d>(rest: &mut &'d mut [u8], len: usize) -> &'d mut [u8] {
    let (head, tail) = std::mem::take(rest).split_at_mut(len);
    *rest = tail;
    head
}

/// Maps the file bytes a window's chunks span (the decoding threads read them from the page
/// cache, or wait for the disk, as they touch them); `None` where the file cannot be mapped,
/// and the window is then read into a buffer instead.
fn map_window(file: &File, window: &[WindowChunk]) -> Option<Mmap> {
    let (first, last) = (window.first()?, window.last()?);
    let len = (last.at + last.stored as u64 - first.at) as usize;
    if len == 0 {
        return None;
    }
    // SAFETY: the map is only read, and only within the records the index validated against
    // the file's length when the reader opened it. Mapping is sound as long as the file is not
    // truncated while mapped (a read would then raise SIGBUS); `Reader::from_file` documents
    // that requirement, and checkpoints are replaced by renaming, never rewritten in place.
    unsafe { MmapOptions::new().offset(first.at).len(len).map(file) }.ok()
}

/// Asks the kernel to read `from..to` of `file` into the page cache, without waiting for it.
/// Advice only: a kernel that ignores it reads on demand.
#[cfg(target_os = "linux")]
fn will_need(file: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(from), libc::off_t::try_from(to - from)) else {
        return;
    };
    // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is open (borrowed
    // from `file`) for the duration of the call.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_WILLNEED) };
}

#[cfg(not(target_os = "linux"))]
fn will_need(_: &File, _: u64, _: u64) {}

/// Decodes a window's chunks on every decoder's thread, each into its destination, checking
/// version-2 chunk checksums there; returns the destinations in order, or the first error in
/// file order.
fn decode_units<'d>(
    decoders: &mut [ChunkDecoder],
    infos: &[TensorInfo],
    layouts: &[Layout],
    buf: &[u8],
    units: Vec<Unit<'d>>,
) -> Result<Vec<&'d mut [u8]>> {
    let results = map_with(decoders, units, |dec, u: Unit<'d>| {
        let (info, layout) = (&infos[u.tensor], &layouts[u.tensor]);
        let planes = &layout.chunks[u.chunk];
        dec.decode(layout.encoding, info.dtype, layout.row, planes, &buf[u.stored], u.dest).map_err(|e| {
            Error::Corrupt {
                name: info.name.clone(),
                chunk: u.chunk,
                plane: e.plane,
                offset: u.file_offset + e.offset,
                reason: e.reason.to_string(),
            }
        })?;
        if let Checksum::Chunks(sums) = &layout.checksum {
            let found = xxh3_64(u.dest);
            if found != sums[u.chunk] {
                return Err(Error::ChecksumMismatch { name: info.name.clone(), expected: sums[u.chunk], found });
            }
        }
        Ok(u.dest)
    });
    results.into_iter().collect()
}

/// Reads exactly `buf.len()` bytes at `offset`.
fn read_at<R: Read + Seek>(r: &mut R, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    r.seek(SeekFrom::Start(offset))?;
    r.read_exact(buf)
}

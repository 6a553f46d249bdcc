//! The reader and writer stream: memory stays at a few chunks beyond what the caller holds,
//! and opening a file reads only its header, trailer and index. Measured with a counting
//! allocator (this test binary's global allocator).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{write, Tensor};
use tckpt::{Dtype, Reader, Writer, WriterOptions};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes allocated at the peak of `f`, above what was allocated when it started.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst) - base)
}

const MIB: usize = 1 << 20;

/// What one thread may hold beyond the caller's tensor: a window of 4 chunks of 1 MiB, their
/// stored bytes, the planes of one chunk, zstd's contexts and the buffers' growth on the way.
/// A third of the 48 MiB tensor: streaming, not loading.
const WINDOW_BOUND: usize = 16 * MIB;

/// The tests run one at a time: the counters are global.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn big_file() -> (Tensor, Vec<u8>) {
    // 48 MiB of float32 in 1 MiB chunks.
    let t = Tensor::weights("big", Dtype::F32, &[3072, 4096], 1);
    let file = write(std::slice::from_ref(&t), &[], WriterOptions { threads: 1, chunk_bytes: MIB });
    (t, file)
}

#[test]
fn writer_holds_a_few_chunks_beyond_the_tensor() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (t, _) = big_file();
    let ((), peak) = peak_during(|| {
        let options = WriterOptions { threads: 1, chunk_bytes: MIB };
        let mut w = Writer::with_options(std::io::sink(), options).unwrap();
        w.add_tensor(&t.name, t.dtype, &t.shape, &t.data).unwrap();
        w.finish(Default::default()).unwrap();
    });
    assert!(peak < WINDOW_BOUND, "writer peaked at {} MiB", peak / MIB);
}

#[test]
fn verify_holds_a_few_chunks_not_the_tensor() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_, file) = big_file();
    let ((), peak) = peak_during(|| {
        let mut r = Reader::with_threads(Cursor::new(&file), 1).unwrap();
        r.verify().unwrap();
    });
    assert!(peak < WINDOW_BOUND, "verify peaked at {} MiB", peak / MIB);
}

#[test]
fn read_tensor_holds_the_tensor_and_a_few_chunks() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (t, file) = big_file();
    let (back, peak) = peak_during(|| {
        let mut r = Reader::with_threads(Cursor::new(&file), 1).unwrap();
        r.read_tensor("big").unwrap()
    });
    assert!(back == t.data);
    assert!(
        peak < t.data.len() + WINDOW_BOUND,
        "read_tensor peaked at {} MiB for a {} MiB tensor",
        peak / MIB,
        t.data.len() / MIB
    );
}

/// Counts the bytes read through it.
struct Counted<R> {
    inner: R,
    read: usize,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n;
        Ok(n)
    }
}

impl<R: Seek> Seek for Counted<R> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(to)
    }
}

#[test]
fn opening_reads_only_header_trailer_and_index() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tensors: Vec<Tensor> = (0..3).map(|i| Tensor::weights(&format!("t{i}"), Dtype::BF16, &[512, 512], i)).collect();
    let file = write(&tensors, &[], WriterOptions::default());
    let index = common::index_range(&file).len();
    let mut r = Reader::new(Counted { inner: Cursor::new(&file), read: 0 }).unwrap();
    assert_eq!(r.tensors().len(), 3);
    let opened = 16 + 32 + index;
    // Reading one tensor reads that tensor's record and nothing else.
    r.read_tensor("t1").unwrap();
    let record = r.tensor("t1").unwrap().stored_len as usize;
    assert_eq!(r.into_inner().read, opened + record);
}

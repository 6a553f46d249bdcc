//! Chunk encoding: splitting elements into byte planes, choosing how each plane is stored, and
//! the inverse. The choice of codec is the writer's policy; a reader only follows the index.
//!
//! Why planes: in a float the sign and exponent bits take few values (trained weights use a
//! handful of exponents), while the low mantissa bits are close to uniform noise. Coding the
//! whole buffer mixes the two and zstd gains little; coding byte `k` of every element as its
//! own stream lets the exponent plane shrink three- or fourfold and the noise planes be stored
//! as they are, which is also what makes the codec faster than zstd on the whole buffer
//! (ZipNN, Blosc's shuffle filter).

use std::io;
use std::ptr::NonNull;

use zstd::zstd_safe::zstd_sys;
use zstd::zstd_safe::CParameter;

use crate::format::{Codec, Encoding, PlaneEntry};
use crate::Dtype;

/// Planes whose order-0 entropy (of the plane or of its differences, whichever is lower) is
/// at least this many bits per byte are stored raw without trying zstd: at most ~1.2% could be
/// saved, which does not pay for the time to code and decode them.
const RAW_ENTROPY_BITS: f64 = 7.9;

/// zstd level for both coders. Level 1 codes as well as 3 on planes (the work is in the
/// entropy coder, which the level barely changes) and is faster.
const ZSTD_LEVEL: i32 = 1;

/// Shortest match the LZ coder looks for. At zstd's default (4 or 5) on low-entropy planes it
/// finds short chance repetitions that cost more as matches than as Huffman-coded literals.
const LZ_MIN_MATCH: i32 = 7;

/// Per-thread state for encoding chunks: two zstd contexts and scratch planes.
pub(crate) struct ChunkEncoder {
    lz: zstd::bulk::Compressor<'static>,
    literals: LiteralCompressor,
    planes: Vec<Vec<u8>>,
    delta: Vec<u8>,
    lz_out: Vec<u8>,
    lit_out: Vec<u8>,
}

impl ChunkEncoder {
    pub(crate) fn new() -> io::Result<Self> {
        let mut lz = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
        lz.set_parameter(CParameter::MinMatch(LZ_MIN_MATCH as u32))?;
        // Planes are at most MAX_CHUNK_BYTES; a 1 KiB hash table keeps the context small and
        // the match search cheap, and planes repeat at short distances if at all.
        lz.set_parameter(CParameter::HashLog(10))?;
        Ok(ChunkEncoder {
            lz,
            literals: LiteralCompressor::new(ZSTD_LEVEL)?,
            planes: Vec::new(),
            delta: Vec::new(),
            lz_out: Vec::new(),
            lit_out: Vec::new(),
        })
    }

    /// Encodes one chunk (`data` holds whole elements), appending its stored planes to `out`;
    /// returns each plane's entry.
    pub(crate) fn encode(
        &mut self,
        encoding: Encoding,
        dtype: Dtype,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> io::Result<Vec<PlaneEntry>> {
        if encoding == Encoding::Bytes {
            return Ok(vec![self.encode_plane(data, out)?]);
        }
        let mut planes = std::mem::take(&mut self.planes);
        split(encoding, dtype, data, &mut planes);
        let entries = planes
            .iter()
            .map(|plane| self.encode_plane(plane, out))
            .collect();
        self.planes = planes;
        entries
    }

    /// Stores one plane the cheapest way found: raw, zstd, or zstd of its differences.
    fn encode_plane(&mut self, plane: &[u8], out: &mut Vec<u8>) -> io::Result<PlaneEntry> {
        let raw = |out: &mut Vec<u8>| {
            out.extend_from_slice(plane);
            Ok(PlaneEntry(Codec::Raw, plane.len() as u64))
        };
        let (plain_bits, delta_bits) = entropies(plane);
        if plain_bits.min(delta_bits) >= RAW_ENTROPY_BITS {
            return raw(out);
        }
        let (codec, src) = if delta_bits < plain_bits {
            delta_encode(plane, &mut self.delta);
            (Codec::DeltaZstd, self.delta.as_slice())
        } else {
            (Codec::Zstd, plane)
        };
        // Literals only (Huffman) wins on planes of independent values such as the exponents
        // of weights; LZ wins where values repeat (zeros, flat regions). Trying both costs
        // little beside the planes stored raw without trying.
        self.literals.compress(src, &mut self.lit_out)?;
        self.lz_out.clear();
        self.lz_out
            .reserve(zstd::zstd_safe::compress_bound(src.len()));
        self.lz.compress_to_buffer(src, &mut self.lz_out)?;
        let best = if self.lz_out.len() < self.lit_out.len() {
            &self.lz_out
        } else {
            &self.lit_out
        };
        if best.len() >= plane.len() {
            return raw(out);
        }
        out.extend_from_slice(best);
        Ok(PlaneEntry(codec, best.len() as u64))
    }
}

/// Per-thread state for decoding chunks.
pub(crate) struct ChunkDecoder {
    zstd: zstd::bulk::Decompressor<'static>,
    planes: Vec<Vec<u8>>,
}

/// Why a plane did not decode: its position in the chunk, its offset in the chunk's stored
/// bytes, and the decoder's words.
#[derive(Debug)]
pub(crate) struct PlaneError {
    pub plane: usize,
    pub offset: u64,
    pub reason: String,
}

impl ChunkDecoder {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(ChunkDecoder {
            zstd: zstd::bulk::Decompressor::new()?,
            planes: Vec::new(),
        })
    }

    /// Decodes one chunk's stored bytes into `out`. The caller has validated the entries
    /// against the encoding and `out.len()`, and `stored` is exactly the planes' bytes.
    pub(crate) fn decode(
        &mut self,
        encoding: Encoding,
        dtype: Dtype,
        entries: &[PlaneEntry],
        stored: &[u8],
        out: &mut [u8],
    ) -> Result<(), PlaneError> {
        if encoding == Encoding::Bytes {
            return decode_plane(&mut self.zstd, entries[0], stored, out).map_err(|reason| {
                PlaneError {
                    plane: 0,
                    offset: 0,
                    reason,
                }
            });
        }
        let elems = out.len() / dtype.size();
        self.planes.resize_with(entries.len(), Vec::new);
        let mut sources: Vec<&[u8]> = Vec::with_capacity(entries.len());
        let mut at = 0usize;
        for (p, (&entry, scratch)) in entries.iter().zip(self.planes.iter_mut()).enumerate() {
            let len = entry.1 as usize;
            let bytes = &stored[at..at + len];
            if entry.0 == Codec::Raw {
                sources.push(bytes);
            } else {
                scratch.resize(elems, 0);
                decode_plane(&mut self.zstd, entry, bytes, scratch).map_err(|reason| {
                    PlaneError {
                        plane: p,
                        offset: at as u64,
                        reason,
                    }
                })?;
                sources.push(scratch);
            }
            at += len;
        }
        merge(encoding, dtype, &sources, out);
        Ok(())
    }
}

/// Decodes one plane into `out`, which has the plane's raw length.
fn decode_plane(
    zstd: &mut zstd::bulk::Decompressor<'static>,
    PlaneEntry(codec, _): PlaneEntry,
    stored: &[u8],
    out: &mut [u8],
) -> Result<(), String> {
    match codec {
        Codec::Raw => out.copy_from_slice(stored),
        Codec::Zstd | Codec::DeltaZstd => {
            let n = zstd
                .decompress_to_buffer(stored, out)
                .map_err(|e| e.to_string())?;
            if n != out.len() {
                return Err(format!("{n} bytes decoded, {} expected", out.len()));
            }
            if codec == Codec::DeltaZstd {
                delta_decode(out);
            }
        }
    }
    Ok(())
}

/// Order-0 entropy, in bits per byte, of `plane` and of its byte-wise differences.
fn entropies(plane: &[u8]) -> (f64, f64) {
    let mut plain = [0u32; 256];
    let mut delta = [0u32; 256];
    let mut prev = 0u8;
    for &b in plane {
        plain[b as usize] += 1;
        delta[b.wrapping_sub(prev) as usize] += 1;
        prev = b;
    }
    (entropy(&plain, plane.len()), entropy(&delta, plane.len()))
}

fn entropy(hist: &[u32; 256], n: usize) -> f64 {
    let n = n as f64;
    hist.iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

fn delta_encode(plane: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut prev = 0u8;
    out.extend(plane.iter().map(|&b| {
        let d = b.wrapping_sub(prev);
        prev = b;
        d
    }));
}

fn delta_decode(plane: &mut [u8]) {
    let mut acc = 0u8;
    for b in plane {
        acc = acc.wrapping_add(*b);
        *b = acc;
    }
}

/// Splits whole elements into planes: plane k gets byte k (little-endian) of each element,
/// after a one-bit left rotation for `FloatPlanes`.
pub(crate) fn split(encoding: Encoding, dtype: Dtype, data: &[u8], planes: &mut Vec<Vec<u8>>) {
    let rotate = encoding == Encoding::FloatPlanes;
    match dtype.size() {
        2 => split_n::<2>(data, rotate, planes),
        4 => split_n::<4>(data, rotate, planes),
        8 => split_n::<8>(data, rotate, planes),
        size => unreachable!("no planes for {size}-byte elements"),
    }
}

/// Inverse of [`split`]: writes whole elements to `out` from the planes.
pub(crate) fn merge(encoding: Encoding, dtype: Dtype, planes: &[&[u8]], out: &mut [u8]) {
    let rotate = encoding == Encoding::FloatPlanes;
    match dtype.size() {
        2 => merge_n::<2>(planes, rotate, out),
        4 => merge_n::<4>(planes, rotate, out),
        8 => merge_n::<8>(planes, rotate, out),
        size => unreachable!("no planes for {size}-byte elements"),
    }
}

fn split_n<const N: usize>(data: &[u8], rotate: bool, planes: &mut Vec<Vec<u8>>) {
    let n = data.len() / N;
    planes.resize_with(N, Vec::new);
    for p in planes.iter_mut() {
        p.clear();
        p.resize(n, 0);
    }
    let bits = 8 * N as u32;
    let mut outs: Vec<&mut [u8]> = planes.iter_mut().map(|p| &mut p[..n]).collect();
    for (i, e) in data.chunks_exact(N).enumerate() {
        let mut x = 0u64;
        for (k, &b) in e.iter().enumerate() {
            x |= u64::from(b) << (8 * k);
        }
        if rotate {
            x = ((x << 1) | (x >> (bits - 1))) & mask(bits);
        }
        for (k, out) in outs.iter_mut().enumerate() {
            out[i] = (x >> (8 * k)) as u8;
        }
    }
}

fn merge_n<const N: usize>(planes: &[&[u8]], rotate: bool, out: &mut [u8]) {
    let bits = 8 * N as u32;
    for (i, e) in out.chunks_exact_mut(N).enumerate() {
        let mut x = 0u64;
        for (k, p) in planes.iter().enumerate() {
            x |= u64::from(p[i]) << (8 * k);
        }
        if rotate {
            x = ((x >> 1) | (x << (bits - 1))) & mask(bits);
        }
        for (k, b) in e.iter_mut().enumerate() {
            *b = (x >> (8 * k)) as u8;
        }
    }
}

const fn mask(bits: u32) -> u64 {
    if bits == 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    }
}

/// A zstd context that codes its input as literals only (Huffman, no LZ matches), through
/// `ZSTD_compressSequences` with no sequences. The output is an ordinary zstd frame. zstd's
/// public levels always search for matches, and on planes of independent values such as
/// exponents those matches cost more than they save (measured: 2.4 bits per exponent of
/// trained weights as literals, 2.9 at level 1).
struct LiteralCompressor(NonNull<zstd_sys::ZSTD_CCtx>);

// SAFETY: a ZSTD_CCtx has no thread affinity; it may be used from any one thread at a time,
// which `&mut self` on every use guarantees.
unsafe impl Send for LiteralCompressor {}

impl LiteralCompressor {
    fn new(level: i32) -> io::Result<Self> {
        // SAFETY: plain constructor; a null return means out of memory.
        let ctx = NonNull::new(unsafe { zstd_sys::ZSTD_createCCtx() })
            .ok_or_else(|| io::Error::other("zstd could not allocate a context"))?;
        let this = LiteralCompressor(ctx);
        // SAFETY: ctx is a live context owned by `this`.
        let code = unsafe {
            zstd_sys::ZSTD_CCtx_setParameter(
                this.0.as_ptr(),
                zstd_sys::ZSTD_cParameter::ZSTD_c_compressionLevel,
                level,
            )
        };
        check(code)?;
        Ok(this)
    }

    /// Replaces `out` with one zstd frame holding `src`.
    fn compress(&mut self, src: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(src.len()));
        // SAFETY: the context is live and exclusively ours; `out` has `capacity()` writable
        // bytes; zero sequences with a null pointer is the documented "all literals" case; the
        // return value is checked before it is used as a length, and is at most the capacity.
        let n = unsafe {
            zstd_sys::ZSTD_compressSequences(
                self.0.as_ptr(),
                out.as_mut_ptr().cast(),
                out.capacity(),
                std::ptr::null(),
                0,
                src.as_ptr().cast(),
                src.len(),
            )
        };
        let n = check(n)?;
        // SAFETY: zstd wrote n <= capacity initialised bytes.
        unsafe { out.set_len(n) };
        Ok(())
    }
}

impl Drop for LiteralCompressor {
    fn drop(&mut self) {
        // SAFETY: the context is live and dropped once.
        unsafe { zstd_sys::ZSTD_freeCCtx(self.0.as_ptr()) };
    }
}

/// Turns a zstd return code into a length or an error.
fn check(code: usize) -> io::Result<usize> {
    // SAFETY: these functions only read the integer and return a static string.
    unsafe {
        if zstd_sys::ZSTD_isError(code) != 0 {
            let msg = std::ffi::CStr::from_ptr(zstd_sys::ZSTD_getErrorName(code));
            return Err(io::Error::other(msg.to_string_lossy().into_owned()));
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_planes_put_the_exponent_on_top() {
        // 1.0f32 = 0x3F80_0000: exponent 127, rotated left: 0x7F00_0000.
        let mut planes = Vec::new();
        split(
            Encoding::FloatPlanes,
            Dtype::F32,
            &1.0f32.to_le_bytes(),
            &mut planes,
        );
        assert_eq!(planes, [[0x00], [0x00], [0x00], [0x7F]]);
        // -2.0 = 0xC000_0000: exponent 128, sign to the bottom bit.
        split(
            Encoding::FloatPlanes,
            Dtype::F32,
            &(-2.0f32).to_le_bytes(),
            &mut planes,
        );
        assert_eq!(planes, [[0x01], [0x00], [0x00], [0x80]]);
    }

    #[test]
    fn split_then_merge_is_identity_for_every_width() {
        let data: Vec<u8> = (0..64u32).map(|i| (i * 37 + 11) as u8).collect();
        for dtype in [Dtype::I16, Dtype::BF16, Dtype::F32, Dtype::I64, Dtype::F64] {
            for encoding in [Encoding::Planes, Encoding::FloatPlanes] {
                let mut planes = Vec::new();
                split(encoding, dtype, &data, &mut planes);
                let views: Vec<&[u8]> = planes.iter().map(Vec::as_slice).collect();
                let mut back = vec![0; data.len()];
                merge(encoding, dtype, &views, &mut back);
                assert_eq!(back, data, "{dtype:?} {encoding:?}");
            }
        }
    }

    #[test]
    fn delta_round_trips() {
        let plane = [5u8, 3, 250, 0, 0, 7];
        let mut d = Vec::new();
        delta_encode(&plane, &mut d);
        assert_eq!(d, [5, 254, 247, 6, 0, 7]);
        delta_decode(&mut d);
        assert_eq!(d, plane);
    }

    #[test]
    fn noise_is_stored_raw_and_structure_is_compressed() {
        let mut enc = ChunkEncoder::new().unwrap();
        let mut x = 1u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        let mut out = Vec::new();
        assert_eq!(
            enc.encode_plane(&noise, &mut out).unwrap(),
            PlaneEntry(Codec::Raw, 4096)
        );
        let ramp: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        let PlaneEntry(codec, len) = enc.encode_plane(&ramp, &mut out).unwrap();
        assert_eq!(codec, Codec::DeltaZstd);
        assert!(len < 100, "{len}");
        let mut dec = ChunkDecoder::new().unwrap();
        let mut back = vec![0; 4096];
        decode_plane(
            &mut dec.zstd,
            PlaneEntry(codec, len),
            &out[4096..],
            &mut back,
        )
        .unwrap();
        assert_eq!(back, ramp);
    }

    #[test]
    fn literal_frames_are_ordinary_zstd() {
        let mut lit = LiteralCompressor::new(ZSTD_LEVEL).unwrap();
        let src: Vec<u8> = (0..10_000u32).map(|i| (i % 7 == 0) as u8 + 120).collect();
        let mut out = Vec::new();
        for _ in 0..2 {
            // Twice: the context must be reusable.
            lit.compress(&src, &mut out).unwrap();
            assert!(out.len() < src.len() / 4);
            assert_eq!(zstd::bulk::decompress(&out, src.len()).unwrap(), src);
        }
    }
}

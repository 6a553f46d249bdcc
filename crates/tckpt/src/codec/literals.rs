//! A zstd context that codes its input as literals only: the one coder zstd's public API
//! does not offer, reached through its experimental interface.

use std::io;
use std::ptr::NonNull;

use zstd::zstd_safe::zstd_sys;

/// A zstd context that codes its input as literals only (Huffman, no LZ matches), through
/// `ZSTD_compressSequences` with no sequences. The output is an ordinary zstd frame. zstd's
/// public levels always search for matches, and on planes of independent values such as
/// exponents those matches cost more than they save (measured: 2.4 bits per exponent of
/// trained weights as literals, 2.9 at level 1).
pub(super) struct LiteralCompressor(NonNull<zstd_sys::ZSTD_CCtx>);

// SAFETY: a ZSTD_CCtx has no thread affinity; it may be used from any one thread at a time,
// which `&mut self` on every use guarantees.
unsafe impl Send for LiteralCompressor {}

impl LiteralCompressor {
    pub(super) fn new(level: i32) -> io::Result<Self> {
        // SAFETY: plain constructor; a null return means out of memory.
        let ctx = NonNull::new(unsafe { zstd_sys::ZSTD_createCCtx() })
            .ok_or_else(|| io::Error::other("zstd could not allocate a context"))?;
        let this = LiteralCompressor(ctx);
        // SAFETY: ctx is a live context owned by `this`.
        let code = unsafe {
            zstd_sys::ZSTD_CCtx_setParameter(this.0.as_ptr(), zstd_sys::ZSTD_cParameter::ZSTD_c_compressionLevel, level)
        };
        check(code)?;
        Ok(this)
    }

    /// Replaces `out` with one zstd frame holding `src`, in blocks of at most `block` bytes
    /// (1 KiB to 128 KiB).
    pub(super) fn compress(&mut self, src: &[u8], block: u32, out: &mut Vec<u8>) -> io::Result<()> {
        // SAFETY: ctx is a live context owned by `self`. A finished frame leaves the context
        // in a stage where parameters are locked until the session is reset.
        // ZSTD_c_maxBlockSize is experimental param 18 in zstd 1.5.6 and later (zstd.h names
        // it only as a macro).
        let code = unsafe {
            check(zstd_sys::ZSTD_CCtx_reset(self.0.as_ptr(), zstd_sys::ZSTD_ResetDirective::ZSTD_reset_session_only))?;
            zstd_sys::ZSTD_CCtx_setParameter(
                self.0.as_ptr(),
                zstd_sys::ZSTD_cParameter::ZSTD_c_experimentalParam18,
                block as i32,
            )
        };
        check(code)?;
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
    use crate::codec::encode::ZSTD_LEVEL;

    #[test]
    fn literal_frames_are_ordinary_zstd() {
        let mut lit = LiteralCompressor::new(ZSTD_LEVEL).unwrap();
        let src: Vec<u8> = (0..10_000u32).map(|i| (i % 7 == 0) as u8 + 120).collect();
        let mut out = Vec::new();
        for block in [128 << 10, 1 << 10] {
            // Twice: the context must be reusable.
            lit.compress(&src, block, &mut out).unwrap();
            assert!(out.len() < src.len() / 4);
            assert_eq!(zstd::bulk::decompress(&out, src.len()).unwrap(), src);
        }
    }
}

//! Safe wrappers over `shim/cuda_memory.cpp`: libtorch's CUDA caching allocator, which tch
//! does not bind (what `torch.cuda.memory_allocated()`, `max_memory_allocated()`,
//! `empty_cache()` and `mem_get_info()` are in Python).

use std::ffi::c_char;

use serde::Serialize;

use crate::shim;

extern "C" {
    fn train_cuda_memory_stats(
        device: i32,
        allocated: *mut i64,
        reserved: *mut i64,
        peak: *mut i64,
        err: *mut *mut c_char,
    ) -> i32;
    fn train_cuda_reset_peak(device: i32, err: *mut *mut c_char) -> i32;
    fn train_cuda_empty_cache(err: *mut *mut c_char) -> i32;
    fn train_cuda_mem_info(device: i32, free: *mut i64, total: *mut i64, err: *mut *mut c_char) -> i32;
    fn train_cuda_autocast_bf16(err: *mut *mut c_char) -> i32;
}

/// Whether a shim call succeeded: to every caller a failure means "no CUDA here" (no
/// allocator registered, or none initialized yet), so its message is dropped.
fn available(f: impl FnOnce(*mut *mut c_char) -> i32) -> bool {
    shim::call(f).is_ok()
}

/// What the caching allocator holds on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AllocatorStats {
    /// Bytes in live tensors.
    pub allocated: u64,
    /// Bytes the allocator holds from the driver (allocated plus cached).
    pub reserved: u64,
    /// Peak of `allocated` since the last reset.
    pub peak_allocated: u64,
}

/// The allocator's statistics for `device`, or `None` without CUDA.
pub fn stats(device: usize) -> Option<AllocatorStats> {
    let (mut a, mut r, mut p) = (0i64, 0i64, 0i64);
    // SAFETY: the pointers are valid for writes for the duration of the call.
    let ok = available(|err| unsafe { train_cuda_memory_stats(device as i32, &mut a, &mut r, &mut p, err) });
    ok.then_some(AllocatorStats { allocated: a as u64, reserved: r as u64, peak_allocated: p as u64 })
}

/// Resets the peak statistics of `device`; false without CUDA.
pub fn reset_peak(device: usize) -> bool {
    // SAFETY: plain value argument; exceptions are caught in the shim.
    available(|err| unsafe { train_cuda_reset_peak(device as i32, err) })
}

/// Returns the allocator's cached, unused blocks to the driver; false without CUDA.
pub fn empty_cache() -> bool {
    // SAFETY: no arguments; exceptions are caught in the shim.
    available(|err| unsafe { train_cuda_empty_cache(err) })
}

/// `(free, total)` bytes of `device` as CUDA reports them (`cudaMemGetInfo`); `None` without CUDA.
pub fn mem_info(device: usize) -> Option<(u64, u64)> {
    let (mut free, mut total) = (0i64, 0i64);
    // SAFETY: the pointers are valid for writes for the duration of the call.
    let ok = available(|err| unsafe { train_cuda_mem_info(device as i32, &mut free, &mut total, err) });
    ok.then_some((free as u64, total as u64))
}

/// Makes CUDA autocast compute in bfloat16; false without CUDA.
pub fn autocast_bf16() -> bool {
    // SAFETY: no arguments; exceptions are caught in the shim.
    available(|err| unsafe { train_cuda_autocast_bf16(err) })
}

/// Caps libtorch's CUDA caching allocator at `limit` bytes of GPU `index`, through its
/// `per_process_memory_fraction` setting, before the first allocation reads it.
pub fn limit_vram(limit: u64, index: usize) {
    match super::probe::GpuProbe::memory(&super::probe::Nvml, index as u32) {
        Ok(m) if m.total > 0 => {
            let fraction = (limit as f64 / m.total as f64).min(1.0);
            let mut conf = std::env::var("PYTORCH_CUDA_ALLOC_CONF").unwrap_or_default();
            if !conf.is_empty() {
                conf.push(',');
            }
            conf.push_str(&format!("per_process_memory_fraction:{fraction:.6}"));
            // Set before any CUDA allocation, while no other thread reads the environment.
            std::env::set_var("PYTORCH_CUDA_ALLOC_CONF", &conf);
            tracing::info!(limit, total = m.total, fraction, "memory.vram_limit: capping the CUDA caching allocator");
        }
        Ok(_) | Err(_) => tracing::warn!("memory.vram_limit is set but the GPU's size is unknown: not applied"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without a GPU every call answers "unavailable" instead of failing.
    #[test]
    fn calls_are_safe_without_a_gpu() {
        if tch::Cuda::is_available() {
            eprintln!("skipped: a CUDA device is present");
            return;
        }
        assert_eq!(stats(0), None);
        assert_eq!(mem_info(0), None);
        let _ = empty_cache();
    }
}

//! Reading how much memory there is: the GPU's through NVML (loaded at run time, so the
//! binary runs where there is no driver: then there is "no GPU"); the host's and this
//! process's through `/proc` and `/sys` (`train_ckpt::host`, shared with the Python package).

use serde::Serialize;

/// One GPU's memory, as NVML reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GpuMemory {
    /// Installed bytes.
    pub total: u64,
    /// Unallocated bytes.
    pub free: u64,
    /// Allocated bytes (all processes).
    pub used: u64,
}

/// Where GPU memory figures come from. A trait, so that planning can be tested with a
/// fixed figure instead of a real device.
pub trait GpuProbe {
    /// The memory of GPU `index`, or why there is none (no driver, no such device).
    fn memory(&self, index: u32) -> Result<GpuMemory, GpuError>;
}

/// Why there is no figure for a GPU.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// NVML cannot be loaded or initialised (no driver).
    #[error("no GPU: NVML unavailable ({source})")]
    Unavailable {
        /// NVML's error.
        source: nvml_wrapper::error::NvmlError,
    },
    /// No such device.
    #[error("no GPU {index}: {source}")]
    NoDevice {
        /// The device index asked for.
        index: u32,
        /// NVML's error.
        source: nvml_wrapper::error::NvmlError,
    },
    /// The device's memory could not be read.
    #[error("GPU {index}: NVML memory query failed: {source}")]
    Query {
        /// The device index.
        index: u32,
        /// NVML's error.
        source: nvml_wrapper::error::NvmlError,
    },
}

/// NVML, the NVIDIA driver's management library.
#[derive(Debug, Default, Clone, Copy)]
pub struct Nvml;

impl GpuProbe for Nvml {
    fn memory(&self, index: u32) -> Result<GpuMemory, GpuError> {
        let nvml = nvml_wrapper::Nvml::init().map_err(|source| GpuError::Unavailable { source })?;
        let device = nvml.device_by_index(index).map_err(|source| GpuError::NoDevice { index, source })?;
        let m = device.memory_info().map_err(|source| GpuError::Query { index, source })?;
        Ok(GpuMemory { total: m.total, free: m.free, used: m.used })
    }
}

/// A fixed figure (`memory.assume_free_vram`), for planning and CI.
#[derive(Debug, Clone, Copy)]
pub struct Assumed(pub u64);

impl GpuProbe for Assumed {
    fn memory(&self, _index: u32) -> Result<GpuMemory, GpuError> {
        Ok(GpuMemory { total: self.0, free: self.0, used: 0 })
    }
}

pub use train_ckpt::host::{host, host_under, reset_peak_rss, HostMemory};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvml_says_no_gpu_instead_of_failing_without_a_driver() {
        if let Err(why) = Nvml.memory(0) {
            let why = why.to_string();
            assert!(why.contains("GPU"), "{why}");
        }
    }
}

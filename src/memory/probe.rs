//! Reading how much memory there is: the GPU's through NVML (loaded at run time, so the
//! binary runs where there is no driver: then there is "no GPU"), the host's and this
//! process's through `/proc`.

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
    fn memory(&self, index: u32) -> Result<GpuMemory, String>;
}

/// NVML, the NVIDIA driver's management library.
#[derive(Debug, Default, Clone, Copy)]
pub struct Nvml;

impl GpuProbe for Nvml {
    fn memory(&self, index: u32) -> Result<GpuMemory, String> {
        let nvml = nvml_wrapper::Nvml::init().map_err(|e| format!("no GPU: NVML unavailable ({e})"))?;
        let device = nvml.device_by_index(index).map_err(|e| format!("no GPU {index}: {e}"))?;
        let m = device.memory_info().map_err(|e| format!("GPU {index}: NVML memory query failed: {e}"))?;
        Ok(GpuMemory { total: m.total, free: m.free, used: m.used })
    }
}

/// A fixed figure (`memory.assume_free_vram`), for planning and CI.
#[derive(Debug, Clone, Copy)]
pub struct Assumed(pub u64);

impl GpuProbe for Assumed {
    fn memory(&self, _index: u32) -> Result<GpuMemory, String> {
        Ok(GpuMemory { total: self.0, free: self.0, used: 0 })
    }
}

/// Host memory, from `/proc/meminfo` and `/proc/self/status` (Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HostMemory {
    /// `MemAvailable`: what can be allocated without swapping.
    pub available: Option<u64>,
    /// This process's resident set now (`VmRSS`).
    pub rss: Option<u64>,
    /// This process's peak resident set (`VmHWM`).
    pub peak_rss: Option<u64>,
}

/// Reads the host's and this process's memory.
pub fn host() -> HostMemory {
    let kib = |text: &str, key: &str| -> Option<u64> {
        let line = text.lines().find_map(|l| l.strip_prefix(key))?;
        Some(line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()? * 1024)
    };
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    HostMemory {
        available: kib(&meminfo, "MemAvailable:"),
        rss: kib(&status, "VmRSS:"),
        peak_rss: kib(&status, "VmHWM:"),
    }
}

/// Resets this process's peak resident set (`VmHWM`) to its current size, so a later
/// [`host`] reports the peak of what came after. Returns false where the kernel refuses.
pub fn reset_peak_rss() -> bool {
    // Writing "5" to clear_refs resets the peak RSS (Linux >= 4.0, see proc(5)).
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_figures_are_read_on_linux() {
        let h = host();
        assert!(h.available.unwrap() > 0 && h.rss.unwrap() > 0 && h.peak_rss.unwrap() >= h.rss.unwrap());
    }

    #[test]
    fn nvml_says_no_gpu_instead_of_failing_without_a_driver() {
        if let Err(why) = Nvml.memory(0) {
            assert!(why.contains("GPU"), "{why}");
        }
    }

    #[test]
    fn peak_rss_resets_and_then_tracks_growth() {
        if !reset_peak_rss() {
            eprintln!("skipped: clear_refs not writable here");
            return;
        }
        let before = host().peak_rss.unwrap();
        let v = vec![1u8; 64 << 20];
        std::hint::black_box(&v);
        assert!(host().peak_rss.unwrap() >= before + (60 << 20));
    }
}

//! The memory a model may take: bytes per parameter, the copies training holds, the absolute
//! cap, and the memory the device has.

/// Bytes per parameter: every model is built in float32.
pub(super) const PARAMETER_BYTES: u128 = 4;
/// Copies of the parameters any training step holds: the weights and their gradients
/// (optimizer state comes on top; `train plan` accounts for it).
pub(super) const TRAINING_COPIES: u128 = 2;
/// The most parameters a model may have whatever the memory probe says (2^40: 4 TiB of
/// float32, beyond any single machine). It also keeps every layer size within libtorch's
/// i64 dimensions, and applies where the probe has no figure.
pub const MAX_PARAMETERS: u128 = 1 << 40;

pub(super) fn human(bytes: u128) -> String {
    bytesize::ByteSize(u64::try_from(bytes).unwrap_or(u64::MAX)).to_string()
}

/// Memory a model on `device` may use: the host's available memory on the CPU, the GPU's
/// free memory on CUDA (`None` when the probe cannot tell).
pub(super) fn available_memory(device: tch::Device) -> Option<(u64, String)> {
    match device {
        tch::Device::Cuda(i) => {
            let free = crate::memory::probe::GpuProbe::memory(&crate::memory::probe::Nvml, i as u32).ok()?.free;
            Some((free, format!("the {} free on cuda:{i}", human(u128::from(free)))))
        }
        _ => {
            let host = crate::memory::probe::host();
            let available = host.available?;
            Some((available, format!("the {} of {} available", human(u128::from(available)), host.available_from())))
        }
    }
}

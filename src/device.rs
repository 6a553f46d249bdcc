//! Choosing the device a run trains on.

use tch::Device;

use crate::config::DeviceSpec;

/// Resolves `run.device` against what libtorch sees.
pub fn select(spec: DeviceSpec) -> Result<Device, String> {
    match spec {
        DeviceSpec::Auto => Ok(if tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => {
            let count = tch::Cuda::device_count() as usize;
            if n < count {
                Ok(Device::Cuda(n))
            } else {
                Err(format!(
                    "run.device is cuda:{n}, but libtorch sees {count} CUDA device(s); use --device cpu or auto"
                ))
            }
        }
    }
}

/// `cpu` or `cuda:N`, as written in logs and metrics.
pub fn name(device: Device) -> String {
    match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".into(),
    }
}

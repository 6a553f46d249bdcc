//! The load plan: the memory figures (probed or assumed), the predicted peak of each
//! strategy and the choice, as `train plan` prints it and as a run logs it; and whether the
//! optimiser's state is restored. The step-down order after an out-of-memory error is
//! [`Strategy::cheaper`]; which tensor is read how is `plan::reads`.

use serde::Serialize;
use std::collections::BTreeMap;
use tch::Device;

use train_ckpt::strategy::{self, Decision, Sizes, Strategy};
use train_ckpt::Meta;

use crate::checkpoint::config::MemoryConfig;
use crate::memory::probe::{self, Assumed, GpuMemory, GpuProbe, HostMemory};

/// The memory the checkpoint will be loaded into, and where the figure came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Budget {
    /// Free bytes on the device that will hold the model (GPU memory; host memory for a CPU
    /// run), `None` when unknown.
    pub free_bytes: Option<u64>,
    /// `memory.assume_free_vram`, `nvml`, `host` (`/proc/meminfo`), or why none.
    pub source: String,
    /// The GPU's figures, when probed.
    pub gpu: Option<GpuMemory>,
}

/// Finds the memory for the model and the load on `device`: what is free, plus `resident`,
/// the bytes of a model already placed there (a probe taken after the model was built no
/// longer counts them as free; the predicted peaks do). So a plan made before the model
/// exists (`train plan`) and one made by a run after building it compare the same figures.
/// An assumed figure (`memory.assume_free_vram`) is the memory before the run, as is
/// `memory.vram_limit`, which caps the whole process.
pub fn budget(cfg: &MemoryConfig, device: Device, resident: u64, gpu: &dyn GpuProbe) -> Budget {
    if let Some(assumed) = cfg.assume_free_vram {
        let m = Assumed(assumed.as_u64()).memory(0).ok();
        return Budget { free_bytes: Some(assumed.as_u64()), source: "memory.assume_free_vram".into(), gpu: m };
    }
    match device {
        Device::Cuda(i) => match gpu.memory(i as u32) {
            Ok(m) => {
                // With memory.vram_limit the allocator never gets more than the limit.
                let free = m.free + resident;
                let free = cfg.vram_limit.map_or(free, |l| free.min(l.as_u64()));
                Budget { free_bytes: Some(free), source: "nvml".into(), gpu: Some(m) }
            }
            Err(why) => Budget { free_bytes: None, source: why.to_string(), gpu: None },
        },
        _ => Budget { free_bytes: probe::host().available.map(|a| a + resident), source: "host".into(), gpu: None },
    }
}

/// A plan, as `train plan --json` prints it (field names stable).
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The chosen strategy.
    pub strategy: Strategy,
    /// Why.
    pub reason: String,
    /// See [`Budget::free_bytes`].
    pub free_vram_bytes: Option<u64>,
    /// See [`Budget::source`].
    pub source: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Predicted peak bytes of each strategy the configuration allows, by name.
    pub predicted_peak_bytes: BTreeMap<&'static str, u64>,
    /// The byte counts the prediction rests on.
    pub sizes: Sizes,
    /// The GPU's total/free/used, when probed.
    pub gpu: Option<GpuMemory>,
    /// Host memory and this process's.
    pub host: HostMemory,
}

/// Chooses how to load: probe (or assumption), sizes, and the constraints that
/// configuration validation already checked. `resident`: see [`budget`].
pub fn make(cfg: &MemoryConfig, device: Device, sizes: Sizes, resident: u64, gpu: &dyn GpuProbe) -> Plan {
    let b = budget(cfg, device, resident, gpu);
    let constraints = cfg.constraints();
    let Decision { strategy, reason } = strategy::choose(&sizes, b.free_bytes, cfg.safety_margin, &constraints);
    let predicted_peak_bytes = strategy::allowed(&constraints).into_iter().map(|s| (s.name(), sizes.peak(s))).collect();
    Plan {
        strategy,
        reason,
        free_vram_bytes: b.free_bytes,
        source: b.source,
        device: crate::device::name(device),
        predicted_peak_bytes,
        sizes,
        gpu: b.gpu,
        host: probe::host(),
    }
}

/// Whether to restore the optimiser from a checkpoint, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptimizerRestore {
    /// Load its state.
    Restore,
    /// Start it fresh, for this reason (logged).
    Fresh(String),
}

/// The one rule for restoring optimiser state: only with a strategy that loads it (not
/// `model_only`, which `memory.load_optimizer_state: false` forces), from a file that holds
/// some, written by the same kind of optimiser (`configured`: its name, as
/// `training.optimizer.kind` spells it).
pub fn restore_optimizer(strategy: Strategy, meta: &Meta, configured: &str) -> OptimizerRestore {
    let saved = meta.optimizer.get("kind").and_then(|k| k.as_str());
    if !strategy.loads_optimizer() {
        OptimizerRestore::Fresh("loading with model_only: momentum and moment estimates start fresh".into())
    } else if !meta.has_optimizer_state {
        OptimizerRestore::Fresh("the checkpoint holds no optimizer state".into())
    } else if saved != Some(configured) {
        OptimizerRestore::Fresh(format!(
            "the checkpoint's optimizer is {}, the configured one {configured}",
            saved.unwrap_or("unknown")
        ))
    } else {
        OptimizerRestore::Restore
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::config::MemoryConfig;

    #[test]
    fn an_assumed_figure_overrides_the_probe_and_is_named() {
        let cfg = MemoryConfig { assume_free_vram: Some(bytesize::ByteSize::gib(6)), ..MemoryConfig::default() };
        let sizes = Sizes { model: 1 << 30, weights: 1 << 30, optimizer: 2 << 30, largest: 1 << 26 };
        let plan = make(&cfg, Device::Cuda(0), sizes, 0, &probe::Nvml);
        assert_eq!(plan.source, "memory.assume_free_vram");
        assert_eq!(plan.free_vram_bytes, Some(6 << 30));
        assert_eq!(plan.strategy, Strategy::MemoryEfficient);
        assert_eq!(plan.predicted_peak_bytes.keys().copied().collect::<Vec<_>>(), ["memory_efficient", "model_only"]);
    }

    #[test]
    fn a_cpu_run_plans_against_host_memory() {
        let plan = make(&MemoryConfig::default(), Device::Cpu, Sizes::default(), 0, &probe::Nvml);
        assert_eq!(plan.source, "host");
        assert!(plan.free_vram_bytes.unwrap() > 0);
    }

    #[test]
    fn the_optimizer_is_restored_only_from_state_of_its_own_kind() {
        let m = Meta::sample("adamw", true);
        assert_eq!(restore_optimizer(Strategy::MemoryEfficient, &m, "adamw"), OptimizerRestore::Restore);
        assert_eq!(restore_optimizer(Strategy::Standard, &m, "adamw"), OptimizerRestore::Restore);
        let OptimizerRestore::Fresh(why) = restore_optimizer(Strategy::Standard, &m, "sgd") else {
            panic!("another optimizer kind must start fresh")
        };
        assert!(why.contains("adamw") && why.contains("sgd"), "{why}");
    }

    #[test]
    fn model_only_and_weights_only_files_start_the_optimizer_fresh() {
        let m = Meta::sample("adamw", true);
        assert!(matches!(restore_optimizer(Strategy::ModelOnly, &m, "adamw"), OptimizerRestore::Fresh(_)));
        let weights_only = Meta::sample("adamw", false);
        assert!(matches!(
            restore_optimizer(Strategy::MemoryEfficient, &weights_only, "adamw"),
            OptimizerRestore::Fresh(_)
        ));
    }
}

//! The two sections the checkpoint layer owns: `memory:`, the seed guide's four switches
//! (how checkpoints are loaded and written), and `checkpoint:`, when they are written and
//! how many are kept.

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use train_ckpt::strategy::Constraints;
pub use train_ckpt::strategy::StrategyChoice;

/// `memory:` the four switches of the seed guide, under the guide's names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Load checkpoints to host memory and move them to the device one tensor at a time,
    /// instead of materialising the whole checkpoint on the device first.
    pub checkpoint_memory_efficient: bool,
    /// Restore optimiser state on resume; `false` starts the optimiser fresh (momentum lost).
    pub load_optimizer_state: bool,
    /// Write checkpoints in the compressed format (`.tckpt`, see docs/compressed-format.md).
    pub compress_checkpoints: bool,
    /// Keep optimiser state in per-epoch checkpoints too (`latest` always has it).
    pub save_optimizer_in_epoch_checkpoints: bool,
    /// How to load a checkpoint: `auto` chooses from free memory and the checkpoint's sizes
    /// within what the two switches above allow; or `standard`, `memory_efficient`, `model_only`.
    pub strategy: StrategyChoice,
    /// Plan with this much free GPU memory instead of asking NVML (e.g. `6GiB`), for CI and
    /// for planning a run on another machine.
    pub assume_free_vram: Option<ByteSize>,
    /// Cap this process's GPU memory (e.g. `8GiB`), so a large GPU can stand in for a small
    /// one: libtorch's caching allocator gets that fraction of the device.
    pub vram_limit: Option<ByteSize>,
    /// Fraction of the free memory kept in reserve when choosing a strategy.
    pub safety_margin: f64,
}

impl MemoryConfig {
    /// What these switches allow the strategy choice. [`Constraints::check`] (run once, by
    /// configuration validation) has ruled out contradictions by the time a load plans.
    pub fn constraints(&self) -> Constraints {
        Constraints {
            choice: self.strategy,
            memory_efficient: self.checkpoint_memory_efficient,
            load_optimizer_state: self.load_optimizer_state,
        }
    }
}

/// The built-in defaults equal the `balanced` profile: safe on small GPUs, exact resume.
impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            checkpoint_memory_efficient: true,
            load_optimizer_state: true,
            compress_checkpoints: false,
            save_optimizer_in_epoch_checkpoints: false,
            strategy: StrategyChoice::Auto,
            assume_free_vram: None,
            vram_limit: None,
            safety_margin: train_ckpt::strategy::DEFAULT_SAFETY_MARGIN,
        }
    }
}

/// `checkpoint:` when checkpoints are written and how many are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Write a per-epoch checkpoint every N epochs (the last epoch always gets one).
    /// `latest` is rewritten after every epoch regardless.
    pub every_n_epochs: u32,
    /// Keep only the newest N per-epoch checkpoints (`None` keeps all). Older ones are
    /// deleted only after the new `latest` has been written and verified.
    pub keep_last: Option<u32>,
    /// With `keep_last`, also keep the per-epoch checkpoint with the lowest validation loss.
    pub keep_best: bool,
    /// Write checkpoints on a background thread; training only waits for the snapshot.
    pub async_save: bool,
    /// Also rewrite `latest` every N optimiser steps inside an epoch (`None`: at epoch ends
    /// only). Resuming from such a checkpoint continues at the exact next batch.
    pub every_n_steps: Option<u64>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { every_n_epochs: 1, keep_last: None, keep_best: true, async_save: true, every_n_steps: None }
    }
}

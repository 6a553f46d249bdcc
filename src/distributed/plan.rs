//! What sharding saves each rank, and `distributed.shard: auto`'s choice. Pure: byte
//! counts in, a choice and its reason out.
//!
//! The bytes a rank holds between steps, for parameters of `P` bytes and optimiser state
//! of `O` bytes replicated, over `W` ranks:
//!
//! | `shard` | weights | gradients | optimizer state |
//! |---|---|---|---|
//! | `none` | P | P | O |
//! | `optimizer` (ZeRO-1) | P | P | O / W |
//! | `optimizer_and_gradients` (ZeRO-2) | P | P / W | O / W |
//!
//! ZeRO-2 here reduce-scatters the gradients once backward is done, so during backward a
//! rank still holds whole gradients (they are released right after): it lowers what stays
//! held between steps (room for the next forward's activations), not backward's peak.

use serde::Serialize;

use super::zero::Stage;

/// The bytes one rank holds under one choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PerRank {
    /// `none`, `optimizer` or `optimizer_and_gradients`.
    pub shard: &'static str,
    /// Parameters (always whole on every rank).
    pub weights: u64,
    /// Gradients held between steps.
    pub gradients: u64,
    /// Optimiser state.
    pub optimizer: u64,
}

impl PerRank {
    /// All of it.
    pub fn total(&self) -> u64 {
        self.weights + self.gradients + self.optimizer
    }
}

/// The three choices' bytes for parameters of `param_bytes` and replicated optimiser
/// state of `optimizer_bytes` over `world` ranks.
pub fn per_rank(param_bytes: u64, optimizer_bytes: u64, world: u32) -> [PerRank; 3] {
    let w = u64::from(world.max(1));
    [
        PerRank { shard: "none", weights: param_bytes, gradients: param_bytes, optimizer: optimizer_bytes },
        PerRank {
            shard: "optimizer",
            weights: param_bytes,
            gradients: param_bytes,
            optimizer: optimizer_bytes.div_ceil(w),
        },
        PerRank {
            shard: "optimizer_and_gradients",
            weights: param_bytes,
            gradients: param_bytes.div_ceil(w),
            optimizer: optimizer_bytes.div_ceil(w),
        },
    ]
}

/// `shard: auto`: the least sharding whose state fits `budget` (a rank's free memory),
/// with room for activations: at most [`AUTO_SHARE`] of it. None when replicated state
/// fits, or when the budget is unknown (then nothing is sharded, and the reason says so);
/// ZeRO-2 when nothing fits (the most it can do).
pub fn auto(choices: &[PerRank; 3], budget: Option<u64>, world: u32) -> (Option<Stage>, String) {
    if world < 2 {
        return (None, "one rank: nothing to shard across".into());
    }
    let Some(budget) = budget else {
        return (None, "the rank's free memory is unknown: state stays replicated".into());
    };
    let room = (budget as f64 * AUTO_SHARE) as u64;
    let gib = |b: u64| format!("{:.2} GiB", b as f64 / f64::from(1u32 << 30));
    let fits = |c: &PerRank| c.total() <= room;
    let [none, zero1, zero2] = choices;
    if fits(none) {
        return (
            None,
            format!("replicated state ({}) fits {} of the rank's {}", gib(none.total()), AUTO_SHARE, gib(budget)),
        );
    }
    let why = |c: &PerRank| {
        format!(
            "replicated state ({}) exceeds {} of the rank's {} free; {} holds {}",
            gib(none.total()),
            AUTO_SHARE,
            gib(budget),
            c.shard,
            gib(c.total())
        )
    };
    if fits(zero1) {
        return (Some(Stage::Optimizer), why(zero1));
    }
    let mut reason = why(zero2);
    if !fits(zero2) {
        reason.push_str(", still more than fits: expect to run out of memory");
    }
    (Some(Stage::OptimizerAndGradients), reason)
}

/// The share of a rank's free memory `auto` lets state take; the rest is for activations
/// and the allocator.
pub const AUTO_SHARE: f64 = 0.6;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_shards_only_as_much_as_needed() {
        let gib = 1u64 << 30;
        // 1 GiB of parameters with Adam (2 GiB of state) over 2 ranks: 4, 3 and 2.5 GiB.
        let c = per_rank(gib, 2 * gib, 2);
        assert_eq!(c.map(|c| c.total()), [4 * gib, 3 * gib, 5 * gib / 2]);
        assert_eq!(auto(&c, Some(10 * gib), 2).0, None);
        assert_eq!(auto(&c, Some(6 * gib), 2).0, Some(Stage::Optimizer));
        assert_eq!(auto(&c, Some(9 * gib / 2), 2).0, Some(Stage::OptimizerAndGradients));
        let (stage, why) = auto(&c, Some(gib), 2);
        assert_eq!(stage, Some(Stage::OptimizerAndGradients));
        assert!(why.contains("expect to run out of memory"), "{why}");
        assert_eq!(auto(&c, None, 2).0, None);
        assert_eq!(auto(&c, Some(gib), 1).0, None);
    }
}

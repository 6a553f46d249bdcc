//! `distributed:` the settings of a data-parallel job (the rank and world come from the
//! launcher's environment, see [`super::env`]).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `distributed:` how the ranks of a job talk to each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedConfig {
    /// `auto` (NCCL on CUDA, Gloo on the CPU), `gloo` or `nccl`.
    pub backend: BackendChoice,
    /// How long a rank waits for the others (the rendezvous, any collective) before it
    /// gives up with an error instead of hanging: `90s`, `10m`, `1h`, `500ms`.
    pub timeout: Timeout,
    /// Average gradients with DDP's own engine (c10d's Reducer), bucket by bucket while
    /// backward still runs; `false`: in buckets once backward is done (no overlap).
    pub overlap: bool,
    /// With the Reducer (`overlap`), search each step's loss graph for parameters it does
    /// not reach (unused, or used on some ranks only) and count them as ready with zero
    /// gradients, as DDP's `find_unused_parameters=True`. Off, such a parameter stops the
    /// run naming it and this key. Costs a graph search and a small all-reduce per step.
    pub find_unused_parameters: bool,
    /// Which state is sharded across the ranks instead of replicated (ZeRO):
    /// `none`, `optimizer` (ZeRO-1), `optimizer_and_gradients` (ZeRO-2), or `auto` (the
    /// memory plan shards when replicated state would not fit a rank's budget).
    pub shard: ShardChoice,
}

/// `distributed.shard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ShardChoice {
    /// Every rank holds all of the optimizer state and gradients (DDP).
    #[default]
    None,
    /// ZeRO-1: each rank holds and steps the optimizer state of its shard of the
    /// parameters; the updated shards are all-gathered.
    Optimizer,
    /// ZeRO-2: ZeRO-1, and gradients are reduce-scattered, so each rank keeps only its
    /// shard's gradients after backward.
    OptimizerAndGradients,
    /// Chosen by the memory plan ([`crate::distributed::plan::auto`]).
    Auto,
}

impl ShardChoice {
    /// Its name as the YAML spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Optimizer => "optimizer",
            Self::OptimizerAndGradients => "optimizer_and_gradients",
            Self::Auto => "auto",
        }
    }
}

impl Default for DistributedConfig {
    fn default() -> Self {
        // PyTorch's default for NCCL; long enough for a slow checkpoint save on rank 0.
        Self {
            backend: BackendChoice::Auto,
            timeout: Timeout(Duration::from_secs(600)),
            overlap: true,
            find_unused_parameters: false,
            shard: ShardChoice::None,
        }
    }
}

/// `distributed.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// NCCL when the run is on CUDA, Gloo on the CPU.
    Auto,
    /// Gloo (CPU tensors).
    Gloo,
    /// NCCL (CUDA tensors).
    Nccl,
}

/// A duration written with its unit: `500ms`, `90s`, `10m`, `1h`; more than zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Timeout(pub Duration);

/// Why a `distributed.timeout` is refused; serde shows it as the key's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutError {
    /// No leading number.
    #[error("{0:?} is not a duration such as 90s, 10m or 1h")]
    NotDuration(String),
    /// A number without a known unit.
    #[error("{0:?} has no unit: write ms, s, m or h (e.g. 90s)")]
    NoUnit(String),
    /// Zero.
    #[error("must be more than zero")]
    Zero,
    /// More milliseconds than 64 bits hold.
    #[error("{0:?} is too long")]
    TooLong(String),
}

impl TryFrom<String> for Timeout {
    type Error = TimeoutError;
    fn try_from(s: String) -> Result<Self, TimeoutError> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let Ok(n) = digits.parse::<u64>() else { return Err(TimeoutError::NotDuration(s)) };
        let ms = match unit.trim() {
            "ms" => Some(n),
            "s" => n.checked_mul(1000),
            "m" | "min" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            _ => return Err(TimeoutError::NoUnit(s)),
        };
        match ms {
            Some(0) => Err(TimeoutError::Zero),
            Some(ms) => Ok(Self(Duration::from_millis(ms))),
            None => Err(TimeoutError::TooLong(s)),
        }
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl From<Timeout> for String {
    fn from(t: Timeout) -> Self {
        t.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_read_and_write_with_their_unit() {
        for (text, ms, shown) in
            [("90s", 90_000, "90s"), ("10m", 600_000, "10m"), ("1h", 3_600_000, "1h"), ("1500ms", 1500, "1500ms")]
        {
            let t = Timeout::try_from(text.to_string()).unwrap();
            assert_eq!(t.0.as_millis(), ms);
            assert_eq!(t.to_string(), shown);
        }
    }

    #[test]
    fn timeouts_without_a_unit_or_of_zero_are_refused() {
        for bad in ["90", "0s", "s", "1.5m", "-1s", "99999999999999999999h"] {
            assert!(Timeout::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }
}

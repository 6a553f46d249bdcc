//! Choosing how to load a checkpoint: a pure function of the free memory, the checkpoint's
//! byte counts and the configuration, unit-tested over a grid of sizes. The one copy of the
//! rule: `train plan` and a run's loads use it through the `train` crate, and the Python
//! package (`train_ckpt.smart_load_checkpoint`) through its extension, fed the free memory
//! that `torch.cuda.mem_get_info()` reports.
//!
//! Predicted peak memory on the device while loading, with `model` the bytes of the model's
//! own parameters (already on the device), `weights` and `optimizer` the checkpoint's bytes
//! of each, and `largest` its largest tensor:
//!
//! | strategy | peak | why |
//! |---|---|---|
//! | `standard` | model + weights + optimizer | the whole checkpoint is staged on the device, then assigned |
//! | `memory_efficient` | model + optimizer + largest | one weight at a time through host memory; the optimizer state lands in place |
//! | `model_only` | model + largest | as above, optimizer state left out (re-initialised: momentum lost) |

use serde::{Deserialize, Serialize};

use crate::names::Role;
use crate::source::CheckpointFile;

/// `memory.strategy`: a strategy, or `auto` to choose one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyChoice {
    /// Choose from free memory and the checkpoint's sizes.
    Auto,
    /// Always `standard`.
    Standard,
    /// Always `memory_efficient`.
    MemoryEfficient,
    /// Always `model_only`.
    ModelOnly,
}

/// The fraction of the free memory kept in reserve by default (`memory.safety_margin`).
pub const DEFAULT_SAFETY_MARGIN: f64 = 0.1;

/// How a checkpoint travels from the file to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Everything to the device at once, then assign. Fastest when it fits.
    Standard,
    /// One tensor at a time through host memory.
    MemoryEfficient,
    /// Weights only, streamed; the optimizer starts fresh.
    ModelOnly,
}

impl Strategy {
    /// All strategies, most memory first.
    pub const ALL: [Strategy; 3] = [Strategy::Standard, Strategy::MemoryEfficient, Strategy::ModelOnly];

    /// The next cheaper strategy, if any (the step down after an out-of-memory error).
    pub fn cheaper(self) -> Option<Strategy> {
        match self {
            Strategy::Standard => Some(Strategy::MemoryEfficient),
            Strategy::MemoryEfficient => Some(Strategy::ModelOnly),
            Strategy::ModelOnly => None,
        }
    }

    /// Its name in configuration and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Standard => "standard",
            Strategy::MemoryEfficient => "memory_efficient",
            Strategy::ModelOnly => "model_only",
        }
    }

    /// Whether it restores optimizer state.
    pub fn loads_optimizer(self) -> bool {
        self != Strategy::ModelOnly
    }
}

/// The byte counts the choice depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Sizes {
    /// The model's own parameters on the device.
    pub model: u64,
    /// The checkpoint's model tensors.
    pub weights: u64,
    /// The checkpoint's optimizer-state tensors.
    pub optimizer: u64,
    /// The checkpoint's largest tensor.
    pub largest: u64,
}

impl Sizes {
    /// The byte counts of an open checkpoint (any kind), for a model of `model` bytes (the
    /// checkpoint's weights, when no model is built yet). Buffers and other non-optimizer
    /// tensors count as weights.
    pub fn of_file(file: &CheckpointFile, model: Option<u64>) -> Sizes {
        let (mut weights, mut optimizer, mut largest) = (0, 0, 0);
        for e in file.entries() {
            match e.role {
                Role::Optimizer => optimizer += e.bytes,
                Role::Model | Role::Other => weights += e.bytes,
            }
            largest = largest.max(e.bytes);
        }
        Sizes { model: model.unwrap_or(weights), weights, optimizer, largest }
    }

    /// Predicted peak device bytes while loading with `s` (see the module table).
    pub fn peak(&self, s: Strategy) -> u64 {
        match s {
            Strategy::Standard => self.model + self.weights + self.optimizer,
            Strategy::MemoryEfficient => self.model + self.optimizer + self.largest,
            Strategy::ModelOnly => self.model + self.largest,
        }
    }
}

/// What the configuration allows (the seed guide's switches and `memory.strategy`); the
/// `train` crate's `MemoryConfig::constraints` reads them from the `memory:` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Constraints {
    /// `memory.strategy`.
    pub choice: StrategyChoice,
    /// `memory.checkpoint_memory_efficient`: rules out `standard`.
    pub memory_efficient: bool,
    /// `memory.load_optimizer_state`: `false` rules out all but `model_only`.
    pub load_optimizer_state: bool,
}

impl Constraints {
    /// The strategy `memory.strategy` names, or `None` for `auto`.
    pub fn explicit(&self) -> Option<Strategy> {
        match self.choice {
            StrategyChoice::Auto => None,
            StrategyChoice::Standard => Some(Strategy::Standard),
            StrategyChoice::MemoryEfficient => Some(Strategy::MemoryEfficient),
            StrategyChoice::ModelOnly => Some(Strategy::ModelOnly),
        }
    }

    /// An explicit `memory.strategy` outside what the seed switches allow is an error naming
    /// both keys.
    pub fn check(&self) -> Result<(), NotAllowed> {
        match self.explicit() {
            Some(strategy) if !allowed(self).contains(&strategy) => {
                let because = if !self.load_optimizer_state {
                    "memory.load_optimizer_state is false"
                } else {
                    "memory.checkpoint_memory_efficient is true"
                };
                Err(NotAllowed { strategy, because })
            }
            _ => Ok(()),
        }
    }
}

/// An explicit `memory.strategy` that the seed guide's switches rule out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("memory.strategy is {} but {because}", strategy.name())]
pub struct NotAllowed {
    /// The strategy asked for.
    pub strategy: Strategy,
    /// The switch that rules it out, and its value.
    pub because: &'static str,
}

/// A decision and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The strategy to load with.
    pub strategy: Strategy,
    /// One sentence a person can act on.
    pub reason: String,
}

/// The strategies the configuration allows, most memory first.
pub fn allowed(c: &Constraints) -> Vec<Strategy> {
    let mut v: Vec<Strategy> = Strategy::ALL.to_vec();
    if c.memory_efficient {
        v.retain(|s| *s != Strategy::Standard);
    }
    if !c.load_optimizer_state {
        v.retain(|s| *s == Strategy::ModelOnly);
    }
    v
}

/// Chooses a strategy. `budget` is the free memory (`None`: unknown, as on a CPU-only run
/// without a figure), `margin` the fraction kept in reserve (0.1 = predicted peaks must fit
/// in 90% of the free memory). An explicit `memory.strategy` is taken as it is: validation
/// ([`Constraints::check`]) refused those the other switches rule out.
pub fn choose(sizes: &Sizes, budget: Option<u64>, margin: f64, c: &Constraints) -> Decision {
    if let Some(s) = c.explicit() {
        return Decision { strategy: s, reason: format!("memory.strategy is {}", s.name()) };
    }
    let allowed = allowed(c);
    let Some(free) = budget else {
        let s = allowed[0];
        return Decision { strategy: s, reason: format!("free memory unknown: {}, the fastest allowed", s.name()) };
    };
    let usable = (free as f64 * (1.0 - margin)) as u64;
    let gib = |b: u64| bytesize::ByteSize(b).to_string();
    match allowed.iter().find(|s| sizes.peak(**s) <= usable) {
        Some(&s) => {
            let skipped: Vec<String> = allowed
                .iter()
                .take_while(|x| **x != s)
                .map(|x| format!("{} needs {}", x.name(), gib(sizes.peak(*x))))
                .collect();
            let mut reason = format!(
                "{} fits: peak {} of {} usable ({:.0}% of {} free)",
                s.name(),
                gib(sizes.peak(s)),
                gib(usable),
                (1.0 - margin) * 100.0,
                gib(free)
            );
            if !skipped.is_empty() {
                reason.push_str(&format!("; {}", skipped.join(", ")));
            }
            Decision { strategy: s, reason }
        }
        None => {
            let s = *allowed.last().expect("model_only is always allowed");
            Decision {
                strategy: s,
                reason: format!(
                    "nothing is predicted to fit ({} needs {}, {} usable): trying {} anyway",
                    s.name(),
                    gib(sizes.peak(s)),
                    gib(usable),
                    s.name()
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const AUTO: Constraints =
        Constraints { choice: StrategyChoice::Auto, memory_efficient: false, load_optimizer_state: true };

    /// A model of `w` GiB with Adam state (2w) and a largest tensor of w/10.
    fn adam(w: u64) -> Sizes {
        Sizes { model: w, weights: w, optimizer: 2 * w, largest: w / 10 }
    }

    #[test]
    fn peaks_follow_the_table() {
        let s = adam(10);
        assert_eq!(s.peak(Strategy::Standard), 40);
        assert_eq!(s.peak(Strategy::MemoryEfficient), 31);
        assert_eq!(s.peak(Strategy::ModelOnly), 11);
    }

    #[test]
    fn auto_picks_the_fastest_that_fits_over_a_grid() {
        for w in [1, 2, 4, 8] {
            let sizes = adam(w * GIB);
            for free_gib in 1..=48u64 {
                let d = choose(&sizes, Some(free_gib * GIB), 0.1, &AUTO);
                let usable = (free_gib * GIB) as f64 * 0.9;
                let fits = |s: Strategy| sizes.peak(s) as f64 <= usable;
                let expected = Strategy::ALL.into_iter().find(|s| fits(*s)).unwrap_or(Strategy::ModelOnly);
                assert_eq!(d.strategy, expected, "model {w} GiB, free {free_gib} GiB: {}", d.reason);
                // Never choose something predicted not to fit when something cheaper does.
                if fits(Strategy::ModelOnly) {
                    assert!(fits(d.strategy));
                }
            }
        }
    }

    #[test]
    fn the_margin_is_kept_in_reserve() {
        let sizes = adam(GIB);
        // standard needs 4 GiB: fits in 4.5 GiB with 10% margin, not in 4.2 GiB.
        assert_eq!(choose(&sizes, Some(GIB * 9 / 2), 0.1, &AUTO).strategy, Strategy::Standard);
        assert_eq!(choose(&sizes, Some(GIB * 42 / 10), 0.1, &AUTO).strategy, Strategy::MemoryEfficient);
    }

    #[test]
    fn the_seed_switches_constrain_the_choice() {
        let sizes = adam(GIB);
        let huge = Some(1000 * GIB);
        let efficient = Constraints { memory_efficient: true, ..AUTO };
        assert_eq!(choose(&sizes, huge, 0.1, &efficient).strategy, Strategy::MemoryEfficient);
        let no_opt = Constraints { load_optimizer_state: false, ..AUTO };
        assert_eq!(choose(&sizes, huge, 0.1, &no_opt).strategy, Strategy::ModelOnly);
    }

    #[test]
    fn an_explicit_choice_wins_unless_the_switches_forbid_it() {
        let sizes = adam(GIB);
        let c = Constraints { choice: StrategyChoice::Standard, ..AUTO };
        assert_eq!(choose(&sizes, Some(GIB), 0.1, &c).strategy, Strategy::Standard);
        let c = Constraints { choice: StrategyChoice::Standard, memory_efficient: true, ..AUTO };
        assert!(c.check().unwrap_err().to_string().contains("checkpoint_memory_efficient"));
        let c = Constraints { choice: StrategyChoice::MemoryEfficient, load_optimizer_state: false, ..AUTO };
        assert!(c.check().unwrap_err().to_string().contains("load_optimizer_state"));
    }

    #[test]
    fn unknown_free_memory_takes_the_fastest_allowed() {
        assert_eq!(choose(&adam(GIB), None, 0.1, &AUTO).strategy, Strategy::Standard);
    }

    #[test]
    fn nothing_fitting_still_tries_the_cheapest_and_says_so() {
        let d = choose(&adam(10 * GIB), Some(GIB), 0.1, &AUTO);
        assert_eq!(d.strategy, Strategy::ModelOnly);
        assert!(d.reason.contains("nothing is predicted to fit"), "{}", d.reason);
    }

    #[test]
    fn stepping_down_ends_at_model_only() {
        assert_eq!(Strategy::Standard.cheaper(), Some(Strategy::MemoryEfficient));
        assert_eq!(Strategy::MemoryEfficient.cheaper(), Some(Strategy::ModelOnly));
        assert_eq!(Strategy::ModelOnly.cheaper(), None);
    }
}

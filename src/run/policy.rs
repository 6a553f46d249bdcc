//! When to save and when to stop: pure functions of the position, the configuration and
//! whether a stop was requested, so every rule is tested without training.
//!
//! | after | rule |
//! |---|---|
//! | a step inside an epoch | a stop request (SIGTERM/SIGINT) or `training.max_steps` reached: save `latest` at the exact batch and stop; otherwise `checkpoint.every_n_steps` dividing the step: save `latest` and go on |
//! | an epoch | always save `latest`; also `epoch-NNNN` every `checkpoint.every_n_epochs` and after the last epoch; then stop for a stop request (unless that was the last epoch anyway) or `max_steps` |

use crate::checkpoint::Position;
use crate::config::Config;

/// The settings the rules read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// `training.epochs`.
    pub epochs: u32,
    /// `training.max_steps`.
    pub max_steps: Option<u64>,
    /// `checkpoint.every_n_epochs`.
    pub every_n_epochs: u32,
    /// `checkpoint.every_n_steps`.
    pub every_n_steps: Option<u64>,
}

impl Cadence {
    /// The cadence `cfg` sets.
    pub fn of(cfg: &Config) -> Self {
        Self {
            epochs: cfg.training.epochs,
            max_steps: cfg.training.max_steps,
            every_n_epochs: cfg.checkpoint.every_n_epochs,
            every_n_steps: cfg.checkpoint.every_n_steps,
        }
    }

    fn max_steps_reached(&self, step: u64) -> bool {
        self.max_steps.is_some_and(|m| step >= m)
    }
}

/// Why a run stops before its last epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM or SIGINT: exit with the requeue code.
    Signal,
    /// `training.max_steps` reached: a normal end.
    MaxSteps,
}

/// What to do after a training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStep {
    /// Go on.
    Continue,
    /// Save `latest` (mid-epoch) and go on.
    Save,
    /// Save `latest` at this exact batch and stop.
    SaveAndStop(Stop),
}

/// The rule after a step that left the run at `pos`, in an epoch of `batches` batches.
/// The step that ends an epoch is left to [`after_epoch`].
pub fn after_step(c: &Cadence, pos: &Position, batches: u64, stop_requested: bool) -> AfterStep {
    if pos.batches_into_epoch >= batches {
        return AfterStep::Continue;
    }
    if stop_requested {
        AfterStep::SaveAndStop(Stop::Signal)
    } else if c.max_steps_reached(pos.step) {
        AfterStep::SaveAndStop(Stop::MaxSteps)
    } else if c.every_n_steps.is_some_and(|n| pos.step.is_multiple_of(n)) {
        AfterStep::Save
    } else {
        AfterStep::Continue
    }
}

/// What to do after an epoch's evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterEpoch {
    /// Also write `epoch-NNNN` (beside `latest`, which is always written).
    pub epoch_file: bool,
    /// Stop after the save.
    pub stop: Option<Stop>,
}

/// The rule after epoch `pos.epoch` (1-based, just completed).
pub fn after_epoch(c: &Cadence, pos: &Position, stop_requested: bool) -> AfterEpoch {
    let last = pos.epoch >= c.epochs;
    let stop = if stop_requested && !last {
        Some(Stop::Signal)
    } else if c.max_steps_reached(pos.step) && !last {
        Some(Stop::MaxSteps)
    } else {
        None
    };
    AfterEpoch { epoch_file: pos.epoch.is_multiple_of(c.every_n_epochs) || last, stop }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Cadence = Cadence { epochs: 4, max_steps: None, every_n_epochs: 1, every_n_steps: None };

    fn at(epoch: u32, step: u64, batches_into_epoch: u64) -> Position {
        Position { epoch, step, batches_into_epoch, partial_loss_sum: 0.0 }
    }

    #[test]
    fn a_stop_request_mid_epoch_saves_the_exact_batch_and_stops() {
        assert_eq!(after_step(&PLAIN, &at(1, 13, 3), 10, true), AfterStep::SaveAndStop(Stop::Signal));
        assert_eq!(after_step(&PLAIN, &at(1, 13, 3), 10, false), AfterStep::Continue);
    }

    #[test]
    fn the_last_step_of_an_epoch_is_left_to_the_epoch_rule() {
        let c = Cadence { every_n_steps: Some(1), max_steps: Some(1), ..PLAIN };
        assert_eq!(after_step(&c, &at(0, 10, 10), 10, true), AfterStep::Continue);
    }

    #[test]
    fn max_steps_mid_epoch_saves_and_stops_as_a_normal_end() {
        let c = Cadence { max_steps: Some(7), ..PLAIN };
        assert_eq!(after_step(&c, &at(0, 6, 6), 10, false), AfterStep::Continue);
        assert_eq!(after_step(&c, &at(0, 7, 7), 10, false), AfterStep::SaveAndStop(Stop::MaxSteps));
    }

    #[test]
    fn every_n_steps_saves_latest_inside_an_epoch() {
        let c = Cadence { every_n_steps: Some(5), ..PLAIN };
        let saves: Vec<u64> = (1..=9).filter(|&s| after_step(&c, &at(0, s, s), 10, false) == AfterStep::Save).collect();
        assert_eq!(saves, [5]);
    }

    #[test]
    fn epoch_files_follow_every_n_epochs_and_the_last_epoch_always_gets_one() {
        let c = Cadence { epochs: 5, every_n_epochs: 2, ..PLAIN };
        let files: Vec<u32> = (1..=5).filter(|&e| after_epoch(&c, &at(e, 0, 0), false).epoch_file).collect();
        assert_eq!(files, [2, 4, 5]);
    }

    #[test]
    fn a_stop_request_after_the_last_epoch_is_a_normal_end() {
        assert_eq!(after_epoch(&PLAIN, &at(2, 0, 0), true).stop, Some(Stop::Signal));
        assert_eq!(after_epoch(&PLAIN, &at(4, 0, 0), true).stop, None);
    }

    #[test]
    fn max_steps_at_an_epoch_end_stops() {
        let c = Cadence { max_steps: Some(20), ..PLAIN };
        assert_eq!(after_epoch(&c, &at(2, 20, 0), false).stop, Some(Stop::MaxSteps));
        assert_eq!(after_epoch(&c, &at(1, 10, 0), false).stop, None);
    }
}

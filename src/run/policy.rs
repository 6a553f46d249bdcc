//! When to save and when to stop: pure functions of the position, the configuration and
//! whether a stop was requested, so every rule is tested without training.
//!
//! | after | rule |
//! |---|---|
//! | a step's outcome | a loss that is not finite is recorded, and ends the run under `training.on_nonfinite: stop`; a step line every `training.log_every_n_steps` |
//! | a step inside an epoch | a stop request (SIGTERM/SIGINT) or `training.max_steps` reached: save `latest` at the exact batch and stop; otherwise `checkpoint.every_n_steps` dividing the step: save `latest` and go on |
//! | an epoch | always save `latest`; also `epoch-NNNN` every `checkpoint.every_n_epochs` and after the last epoch; then stop for a stop request (unless that was the last epoch anyway) or `max_steps` |

use crate::checkpoint::Position;
use crate::config::{Config, ConfigError, EarlyStopping, OnNonfinite, StopMetric};
use crate::data::Task;

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

/// A step whose loss was not finite (its update was not applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nonfinite {
    /// The step it is recorded as: the one attempted when the run stops there, else the
    /// run's step (the update was skipped, or let through).
    pub at: u64,
    /// `training.on_nonfinite: stop`: the run ends here, diverged.
    pub stop: bool,
}

/// What a step's outcome asks of the loop, before the stop vote and [`after_step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterOutcome {
    /// The loss was not finite: say so, record it, and maybe stop.
    pub nonfinite: Option<Nonfinite>,
    /// Write the step's metrics line (`training.log_every_n_steps`).
    pub step_line: bool,
}

/// The rule for a step's outcome: `applied` or not, leaving the run at optimiser step
/// `step`.
pub fn after_outcome(applied: bool, step: u64, on_nonfinite: OnNonfinite, log_every: u64) -> AfterOutcome {
    let stop = on_nonfinite == OnNonfinite::Stop;
    AfterOutcome {
        nonfinite: (!applied).then_some(Nonfinite { at: step + u64::from(stop), stop }),
        step_line: step.is_multiple_of(log_every),
    }
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

/// Where early stopping stands after the epochs of `history` (each epoch's validation
/// metric, in order; NaN never improves).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plateau {
    /// The epoch with the best metric (1-based; the later one on ties): the checkpoint
    /// `keep_best` keeps.
    pub best_epoch: u32,
    /// Its metric.
    pub best: f64,
    /// Epochs since the metric last improved by more than `min_delta`.
    pub since: u32,
}

/// `training.early_stopping`'s rule: an epoch improves when its metric beats the best so far
/// by more than `min_delta`; the run stops once `patience` epochs have passed since the last
/// improvement. `None` while no epoch has a metric (see [`Plateau::stops`]).
pub fn plateau(history: &[f64], rule: &EarlyStopping) -> Option<Plateau> {
    // On StopMetric's one scale (higher is better); NaN values are skipped below.
    let score = |v: f64| rule.metric.rank(v).unwrap_or(f64::NAN);
    let better = |v: f64, best: f64, delta: f64| score(v) > score(best) + delta;
    // (epoch index, metric) of the last improvement and of the best value.
    let mut improved: Option<(usize, f64)> = None;
    let mut best: Option<(usize, f64)> = None;
    for (i, &v) in history.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if improved.is_none_or(|(_, b)| better(v, b, rule.min_delta)) {
            improved = Some((i, v));
        }
        if best.is_none_or(|(_, b)| !better(b, v, 0.0)) {
            best = Some((i, v));
        }
    }
    let ((last, _), (i, value)) = (improved?, best?);
    Some(Plateau { best_epoch: i as u32 + 1, best: value, since: (history.len() - 1 - last) as u32 })
}

impl Plateau {
    /// Whether the run stops here under `rule`.
    pub fn stops(&self, rule: &EarlyStopping) -> bool {
        self.since >= rule.patience
    }
}

/// Refuses early stopping on `val_accuracy` for a task without accuracy (regression): the
/// metric would never improve, so the run would never stop early, and `keep_best` would
/// keep an arbitrary epoch.
pub fn check_stop_metric(early: Option<&EarlyStopping>, task: Task) -> Result<(), ConfigError> {
    match (early.map(|e| e.metric), task) {
        (Some(StopMetric::ValAccuracy), Task::Regression { .. }) => Err(ConfigError::Invalid {
            key: "training.early_stopping.metric".into(),
            message: "is val_accuracy, but the data's float targets make this a regression task, which has no \
                      accuracy; use val_loss"
                .into(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Cadence = Cadence { epochs: 4, max_steps: None, every_n_epochs: 1, every_n_steps: None };

    fn at(epoch: u32, step: u64, batches_into_epoch: u64) -> Position {
        Position { epoch, step, batches_into_epoch, partial_loss_sum: 0.0 }
    }

    #[test]
    fn early_stopping_on_val_accuracy_for_a_regression_task_is_refused_with_the_key_named() {
        let on = |metric| Some(EarlyStopping { metric, ..EarlyStopping::default() });
        let regression = Task::Regression { outputs: 1 };
        let e = check_stop_metric(on(StopMetric::ValAccuracy).as_ref(), regression).unwrap_err();
        assert!(e.to_string().contains("training.early_stopping.metric"), "{e}");
        assert!(check_stop_metric(on(StopMetric::ValLoss).as_ref(), regression).is_ok());
        assert!(check_stop_metric(None, regression).is_ok());
        let classes = Task::Classification { classes: 3 };
        assert!(check_stop_metric(on(StopMetric::ValAccuracy).as_ref(), classes).is_ok());
    }

    #[test]
    fn a_nonfinite_loss_is_recorded_and_stops_only_under_on_nonfinite_stop() {
        let applied = after_outcome(true, 10, OnNonfinite::Stop, 5);
        assert_eq!(applied, AfterOutcome { nonfinite: None, step_line: true });
        // The step that diverged is the one attempted: the run stays at step 10.
        let stop = after_outcome(false, 10, OnNonfinite::Stop, 5);
        assert_eq!(stop.nonfinite, Some(Nonfinite { at: 11, stop: true }));
        let skip = after_outcome(false, 10, OnNonfinite::SkipStep, 5);
        assert_eq!(skip.nonfinite, Some(Nonfinite { at: 10, stop: false }));
        assert!(skip.step_line);
        assert!(!after_outcome(true, 11, OnNonfinite::Continue, 5).step_line);
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

    #[test]
    fn early_stopping_waits_patience_epochs_after_the_best_counting_only_real_improvements() {
        let rule = EarlyStopping { metric: StopMetric::ValLoss, patience: 2, min_delta: 0.01 };
        assert_eq!(plateau(&[], &rule), None);
        let p = plateau(&[1.0, 0.8, 0.795, 0.9], &rule).unwrap();
        // 0.795 is not 0.01 better than 0.8: the last improvement was two epochs ago, though
        // epoch 3 has the lowest loss (the checkpoint kept).
        assert_eq!((p.best_epoch, p.best, p.since), (3, 0.795, 2));
        assert!(p.stops(&rule));
        let p = plateau(&[1.0, 0.8, 0.7], &rule).unwrap();
        assert!(!p.stops(&rule));
        assert_eq!(plateau(&[f64::NAN, f64::NAN], &rule), None);
        let acc = EarlyStopping { metric: StopMetric::ValAccuracy, patience: 1, min_delta: 0.0 };
        let p = plateau(&[0.5, 0.9, 0.9], &acc).unwrap();
        assert_eq!((p.best_epoch, p.since, p.stops(&acc)), (3, 1, true));
    }
}

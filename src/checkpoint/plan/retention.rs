//! Which per-epoch checkpoints to delete: a pure function of what exists and the policy,
//! kept apart from the file system so that it can be tested over every case.
//!
//! Rules, in order of precedence:
//! 1. nothing is deleted unless `latest` was just written and verified (so there is always
//!    at least one valid checkpoint, and never only a torn one);
//! 2. the newest `keep_last` epoch checkpoints are kept;
//! 3. with `keep_best`, the epoch checkpoint with the best validation metric (the lowest
//!    loss, or with early stopping on accuracy the highest accuracy) is kept too;
//! 4. everything else goes. `keep_last: None` keeps everything.

/// What the policy needs to know about one epoch checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochEntry {
    /// Its epoch.
    pub epoch: u32,
    /// Its validation loss (`None` when its metadata could not be read: such a file is kept,
    /// as it may be another program's).
    pub val_loss: Option<f64>,
    /// Its validation accuracy (NaN when not measured).
    pub val_accuracy: Option<f64>,
}

/// The retention policy (`checkpoint.keep_last`, `checkpoint.keep_best`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Keep this many newest epoch checkpoints; `None` keeps all.
    pub keep_last: Option<u32>,
    /// Also keep the one with the best validation metric.
    pub keep_best: bool,
    /// Which metric makes an epoch the best.
    pub best_by: crate::metrics::StopMetric,
}

/// The epochs whose checkpoints to delete, ascending.
pub fn to_delete(entries: &[EpochEntry], policy: Policy, latest_verified: bool) -> Vec<u32> {
    let Some(keep_last) = policy.keep_last else { return Vec::new() };
    if !latest_verified {
        return Vec::new();
    }
    let mut epochs: Vec<u32> = entries.iter().filter(|e| e.val_loss.is_some()).map(|e| e.epoch).collect();
    epochs.sort_unstable();
    epochs.dedup();
    let newest: Vec<u32> = epochs.iter().rev().take(keep_last as usize).copied().collect();
    let best = policy
        .keep_best
        .then(|| {
            // Higher scores are better (StopMetric::score); ties go to the later epoch.
            let score = |e: &EpochEntry| {
                policy.best_by.score(e.val_loss.unwrap_or(f64::NAN), e.val_accuracy.unwrap_or(f64::NAN))
            };
            entries
                .iter()
                .filter_map(|e| score(e).map(|s| (s, e.epoch)))
                .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
                .map(|(_, epoch)| epoch)
        })
        .flatten();
    epochs.into_iter().filter(|e| !newest.contains(e) && Some(*e) != best).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::StopMetric;

    fn entries(losses: &[f64]) -> Vec<EpochEntry> {
        losses
            .iter()
            .enumerate()
            .map(|(i, &l)| EpochEntry { epoch: i as u32 + 1, val_loss: Some(l), val_accuracy: Some(1.0 - l) })
            .collect()
    }

    const KEEP2_BEST: Policy = Policy { keep_last: Some(2), keep_best: true, best_by: StopMetric::ValLoss };

    #[test]
    fn keeps_everything_without_a_limit() {
        assert!(to_delete(
            &entries(&[3.0, 2.0, 1.0]),
            Policy { keep_last: None, keep_best: true, best_by: StopMetric::ValLoss },
            true
        )
        .is_empty());
    }

    #[test]
    fn keeps_the_newest_and_the_best() {
        // best is epoch 2
        assert_eq!(to_delete(&entries(&[3.0, 0.5, 2.0, 1.0, 1.5]), KEEP2_BEST, true), vec![1, 3]);
    }

    #[test]
    fn best_among_the_newest_costs_nothing_extra() {
        assert_eq!(to_delete(&entries(&[3.0, 2.0, 1.0, 0.5]), KEEP2_BEST, true), vec![1, 2]);
    }

    #[test]
    fn without_keep_best_only_the_newest_stay() {
        let policy = Policy { keep_last: Some(1), keep_best: false, best_by: StopMetric::ValLoss };
        assert_eq!(to_delete(&entries(&[0.1, 2.0, 3.0]), policy, true), vec![1, 2]);
    }

    #[test]
    fn deletes_nothing_when_latest_did_not_verify() {
        assert!(to_delete(&entries(&[3.0, 2.0, 1.0, 0.5]), KEEP2_BEST, false).is_empty());
    }

    #[test]
    fn keep_last_zero_still_keeps_the_best() {
        let policy = Policy { keep_last: Some(0), keep_best: true, best_by: StopMetric::ValLoss };
        assert_eq!(to_delete(&entries(&[3.0, 1.0, 2.0]), policy, true), vec![1, 3]);
    }

    #[test]
    fn unreadable_entries_are_never_deleted() {
        let mut e = entries(&[3.0, 2.0, 1.0]);
        e[0].val_loss = None;
        assert_eq!(
            to_delete(&e, Policy { keep_last: Some(1), keep_best: false, best_by: StopMetric::ValLoss }, true),
            vec![2]
        );
    }

    #[test]
    fn nan_losses_are_not_best() {
        assert_eq!(
            to_delete(
                &entries(&[f64::NAN, 2.0, 1.0, 0.9]),
                Policy { keep_last: Some(1), keep_best: true, best_by: StopMetric::ValLoss },
                true
            ),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn with_accuracy_as_the_metric_the_most_accurate_epoch_is_the_best() {
        let mut e = entries(&[3.0, 2.0, 1.0]);
        // Epoch 1 has the lowest accuracy by `entries`' rule; make it the most accurate.
        e[0].val_accuracy = Some(0.99);
        let by_accuracy = Policy { keep_last: Some(1), keep_best: true, best_by: StopMetric::ValAccuracy };
        assert_eq!(to_delete(&e, by_accuracy, true), vec![2]);
        let by_loss = Policy { best_by: StopMetric::ValLoss, ..by_accuracy };
        assert_eq!(to_delete(&e, by_loss, true), vec![1, 2]);
    }
}

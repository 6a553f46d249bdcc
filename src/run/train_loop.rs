//! The epochs of a run: batches in, steps taken (retried with a smaller micro-batch when
//! one runs out of memory), metrics written, and saves and stops as [`super::policy`]
//! says.
//!
//! In a data-parallel job every rank runs this loop in lockstep: the stop request is agreed
//! by an all-reduce each step (so all ranks save and stop at the same step), and only rank 0
//! has a saver and a metrics log, the others waiting at a barrier after each save.

use std::time::Instant;

use super::error::RunError;
use super::job::PlannedConfig;
use super::policy::{self, AfterStep, Cadence, Stop};
use super::signals::StopFlag;
use crate::checkpoint::saver::Saver;
use crate::data::{Dataset, Prefetcher};
use crate::distributed::Dist;
use crate::metrics::{EpochMetrics, EventMetrics, MetricsLine, MetricsLog, StepMetrics};
use crate::progress::Progress;
use crate::training::{StepOutcome, Trainer};

/// What the loop needs besides the trainer.
pub struct Loop<'a> {
    /// The configuration, as planned (the global batch).
    pub cfg: &'a PlannedConfig,
    /// The data.
    pub data: &'a Dataset,
    /// Writes checkpoints (rank 0 of a data-parallel job only).
    pub saver: Option<&'a mut Saver>,
    /// The run's metrics (rank 0 of a data-parallel job only).
    pub log: Option<&'a MetricsLog>,
    /// The data-parallel job, if any.
    pub dist: Option<&'a Dist>,
    /// Set by SIGTERM/SIGINT.
    pub stop: &'a StopFlag,
}

/// An epoch's batches, all trained.
struct Trained {
    /// Examples trained.
    samples: usize,
    /// Time spent waiting for the next batch.
    waited: f64,
    /// Examples skipped as unreadable.
    skipped: u64,
    /// The learning rate of the last step.
    lr: f64,
    /// Wall time of the batches.
    seconds: f64,
}

/// How an epoch's batches ended.
enum Batches {
    /// All trained: the epoch's evaluation and save come next.
    Done(Trained),
    /// Stopped mid-epoch, `latest` saved.
    Stopped(Stop),
}

/// How the loop ended.
#[derive(Debug, Clone, Default)]
pub struct LoopEnd {
    /// The metrics of the last epoch completed, if any.
    pub last: Option<EpochMetrics>,
    /// Stopped by a signal, after saving `latest`.
    pub interrupted: bool,
}

impl Loop<'_> {
    fn save(&mut self, trainer: &Trainer, epoch_file: bool) -> Result<f64, RunError> {
        // Every rank is here at the same step: the checkpoint holds rank 0's buffers.
        trainer.sync_buffers()?;
        if !trainer.weights_finite() {
            // training.on_nonfinite: continue let a bad update through. The last finite
            // `latest` is worth more than this one.
            tracing::error!(
                step = trainer.position.step,
                "weights are not finite: checkpoint not written, `latest` keeps the last finite state"
            );
            return Ok(0.0);
        }
        let blocked = match self.saver.as_deref_mut() {
            Some(saver) => saver.submit(trainer.checkpoint_state(), epoch_file)?.0,
            None => 0.0,
        };
        if let Some(d) = self.dist {
            d.barrier()?;
        }
        Ok(blocked)
    }

    /// Whether to stop: a signal here, or in a data-parallel job on any rank (every rank
    /// gets the same answer, so all of them stop at the same step).
    fn stop_requested(&self) -> Result<bool, RunError> {
        match self.dist {
            Some(d) => Ok(d.any(self.stop.raised())?),
            None => Ok(self.stop.raised()),
        }
    }

    /// Logs and records a step whose loss was not finite, as step `at`.
    fn nonfinite(
        &self,
        trainer: &Trainer,
        epoch: u32,
        step: &StepOutcome,
        at: u64,
        run_start: Instant,
    ) -> Result<(), RunError> {
        tracing::warn!(
            step = at,
            loss = step.loss,
            on_nonfinite = ?self.cfg.training.on_nonfinite,
            "the loss is not finite: the update was not applied"
        );
        self.append(&step_line(trainer, epoch, step, 0.0, run_start))?;
        self.append(&MetricsLine::Event(EventMetrics {
            step: at,
            event: "nonfinite_loss".into(),
            grad_accum_steps: trainer.grad_accum_steps as u32,
            micro_batch: 0,
            detail: format!("loss {}", step.loss),
        }))
    }

    /// Whether `training.early_stopping` ends the run now. In a data-parallel job only rank 0
    /// has the metrics, and its decision is every rank's.
    fn plateaued(&self, trainer: &Trainer) -> Result<bool, RunError> {
        let here = self.plateaued_here(trainer)?;
        match self.dist {
            Some(d) => Ok(d.any(here)?),
            None => Ok(here),
        }
    }

    /// Whether `training.early_stopping` ends the run now, judged on every epoch the run's
    /// metrics record (a resumed run included); says so when it does.
    fn plateaued_here(&self, trainer: &Trainer) -> Result<bool, RunError> {
        let (Some(rule), Some(log)) = (&self.cfg.training.early_stopping, self.log) else { return Ok(false) };
        let epochs = match MetricsLog::read(log.path()) {
            Ok(epochs) => epochs,
            // A fresh run writes its first line at its first step.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(RunError::Io { path: log.path().to_path_buf(), source }),
        };
        let history: Vec<f64> = epochs
            .iter()
            .filter(|m| m.epoch <= trainer.position.epoch)
            .map(|m| rule.metric.value(m.val_loss, m.val_accuracy))
            .collect();
        match policy::plateau(&history, rule) {
            Some(p) if p.stops(rule) => {
                // The best value can be newer than the last improvement (a gain smaller than
                // min_delta): say both, with the numbers written out.
                let last_improved = history.len() as u32 - p.since;
                tracing::info!(
                    best_epoch = p.best_epoch,
                    best = %format_args!("{:.6}", p.best),
                    patience = rule.patience,
                    "early stopping: {:?} last improved by more than {} at epoch {last_improved}, {} epochs ago \
                     (patience {}); its best value, {:.6} at epoch {}, is kept (epoch-{:04}, unless \
                     checkpoint.every_n_epochs skipped it)",
                    rule.metric,
                    rule.min_delta,
                    p.since,
                    rule.patience,
                    p.best,
                    p.best_epoch,
                    p.best_epoch
                );
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn append(&self, line: &MetricsLine) -> Result<(), RunError> {
        let Some(log) = self.log else { return Ok(()) };
        log.append(line).map_err(|source| RunError::Io { path: log.path().to_path_buf(), source })
    }

    /// Trains from the trainer's position to `training.epochs` (or a stop): the executor of
    /// [`policy`]'s decisions, epoch by epoch.
    pub fn run(&mut self, trainer: &mut Trainer) -> Result<LoopEnd, RunError> {
        let cadence = Cadence::of(self.cfg);
        let mut end = LoopEnd::default();
        let run_start = Instant::now();
        while trainer.position.epoch < cadence.epochs {
            if self.plateaued(trainer)? {
                return Ok(end);
            }
            let epoch = trainer.position.epoch + 1;
            let _span = tracing::info_span!("epoch", epoch).entered();
            let stop = match self.train_batches(trainer, epoch, &cadence, run_start)? {
                Batches::Stopped(why) => Some(why),
                Batches::Done(trained) => {
                    let (metrics, stop) = self.end_epoch(trainer, epoch, &cadence, trained)?;
                    end.last = Some(metrics);
                    stop
                }
            };
            if let Some(why) = stop {
                end.interrupted = why == Stop::Signal;
                return Ok(end);
            }
        }
        Ok(end)
    }

    /// The epoch's batches from the trainer's position on, each step followed by what
    /// [`policy::after_outcome`] and [`policy::after_step`] decide.
    fn train_batches(
        &mut self,
        trainer: &mut Trainer,
        epoch: u32,
        cadence: &Cadence,
        run_start: Instant,
    ) -> Result<Batches, RunError> {
        let t = &self.cfg.training;
        let batches = trainer.epoch_plan(self.data.train.len());
        // resume::check_position made sure the position lies inside this epoch.
        let skip = trainer.position.batches_into_epoch as usize;
        let mut progress =
            Progress::start(epoch, cadence.epochs, batches.len() as u64, skip as u64, t.log_every_n_steps);
        let start = Instant::now();
        let mut trained = Trained { samples: 0, waited: 0.0, skipped: 0, lr: t.optimizer.lr, seconds: 0.0 };
        let skipped_before = self.data.train.skipped();
        let depth = self.cfg.data.prefetch_batches;
        let pass = trainer.train_pass();
        let mut queue = Prefetcher::new(
            &self.data.train,
            (skip..batches.len()).map(move |b| batches.batch(b)),
            pass,
            trainer.device,
            depth,
        );
        for b in skip.. {
            let asked = Instant::now();
            let Some(batch) = queue.next() else { break };
            trained.waited += asked.elapsed().as_secs_f64();
            let (xs, ys) = batch?;
            let step = self.step_with_retry(trainer, &xs, &ys, batches.global_len(b) as i64)?;
            let after = policy::after_outcome(step.applied, trainer.position.step, t.on_nonfinite, t.log_every_n_steps);
            if let Some(nonfinite) = after.nonfinite {
                self.nonfinite(trainer, epoch, &step, nonfinite.at, run_start)?;
                if nonfinite.stop {
                    progress.finish();
                    return Err(RunError::NonFinite { step: nonfinite.at, loss: step.loss });
                }
            }
            trained.samples += step.samples;
            trained.lr = step.lr;
            let rate = progress.step(trainer.position.step, step.loss, step.lr, step.samples);
            if after.step_line {
                self.append(&step_line(trainer, epoch, &step, rate, run_start))?;
            }
            // Agreed by every rank in the step itself; a signal since is seen next step.
            let stop = step.stop || (self.dist.is_none() && self.stop.raised());
            match policy::after_step(cadence, &trainer.position, batches.len() as u64, stop) {
                AfterStep::Continue => {}
                AfterStep::Save => {
                    self.save(trainer, false)?;
                }
                AfterStep::SaveAndStop(why) => {
                    progress.finish();
                    match why {
                        Stop::Signal => tracing::warn!(
                            epoch,
                            batch = trainer.position.batches_into_epoch,
                            "stop requested: saving `latest` and exiting"
                        ),
                        Stop::MaxSteps => {
                            tracing::info!(step = trainer.position.step, "reached training.max_steps: saving `latest`")
                        }
                    }
                    self.save(trainer, false)?;
                    return Ok(Batches::Stopped(why));
                }
            }
        }
        progress.finish();
        trained.seconds = start.elapsed().as_secs_f64();
        trained.skipped = self.data.train.skipped() - skipped_before;
        Ok(Batches::Done(trained))
    }

    /// After an epoch's last batch: its evaluation, its save ([`policy::after_epoch`]), its
    /// metrics line; the stop that decision asks for, if any.
    fn end_epoch(
        &mut self,
        trainer: &mut Trainer,
        epoch: u32,
        cadence: &Cadence,
        trained: Trained,
    ) -> Result<(EpochMetrics, Option<Stop>), RunError> {
        if let Some(d) = self.dist {
            let t = d.take_times();
            let per_step = |s: f64| format!("{:.3}", s * 1e3 / t.steps.max(1) as f64);
            tracing::info!(
                epoch,
                rank = d.rank(),
                steps = t.steps,
                overlap = d.overlaps(),
                last_backward_ms = per_step(t.last_backward),
                allreduce_after_backward_ms = per_step(t.allreduce_after),
                small_allreduces_ms = per_step(t.small),
                reduce_scatter_ms = per_step(t.reduce_scatter),
                allgather_ms = per_step(t.allgather),
                "data parallel: time per step"
            );
        }
        let train_loss = trainer.finish_epoch(self.data.train.len());
        let eval_start = Instant::now();
        let eval = crate::fault::catch_torch(|| trainer.evaluate(&self.data.val)).map_err(|caught| {
            RunError::Libtorch { during: format!("evaluation after epoch {epoch}"), message: caught.message() }
        })??;
        let eval_seconds = eval_start.elapsed().as_secs_f64();
        trainer.last_eval = eval;

        let decision = policy::after_epoch(cadence, &trainer.position, self.stop_requested()?);
        let blocked = self.save(trainer, decision.epoch_file)?;
        let m = EpochMetrics {
            epoch,
            step: trainer.position.step,
            train_loss,
            val_loss: eval.loss,
            val_accuracy: eval.accuracy,
            lr: trained.lr,
            train_seconds: trained.seconds,
            samples_per_sec: trained.samples as f64 / trained.seconds.max(f64::EPSILON),
            eval_seconds,
            checkpoint_blocked_seconds: blocked,
            host_rss_bytes: crate::memory::probe::host().rss,
            data_wait_seconds: trained.waited,
            skipped_samples: trained.skipped,
        };
        self.append(&MetricsLine::Epoch(m.clone()))?;
        // Accuracy does not apply to regression (NaN in the metrics): not shown.
        let accuracy = Some(m.val_accuracy).filter(|a| !a.is_nan()).map(|a| format!("{a:.4}"));
        tracing::info!(
            epoch,
            of = cadence.epochs,
            train_loss = format_args!("{:.4}", m.train_loss),
            val_loss = format_args!("{:.4}", m.val_loss),
            val_accuracy = accuracy.as_deref().map(tracing::field::display),
            samples_per_sec = format_args!("{:.0}", m.samples_per_sec),
            data_wait = format_args!("{:.1}%", 100.0 * m.data_wait_seconds / m.train_seconds.max(f64::EPSILON)),
            skipped_samples = (m.skipped_samples > 0).then_some(m.skipped_samples),
            checkpoint_blocked_ms = format_args!("{:.1}", blocked * 1e3),
            "epoch done"
        );
        match decision.stop {
            Some(Stop::Signal) => tracing::warn!(epoch, "stop requested: exiting after the epoch's checkpoint"),
            Some(Stop::MaxSteps) => tracing::info!(step = trainer.position.step, "reached training.max_steps"),
            None => {}
        }
        Ok((m, decision.stop))
    }

    /// One step; a step that runs out of memory has not updated anything yet (the optimiser
    /// steps after every micro-batch went through), so it is retried with half the
    /// micro-batch and twice the accumulation: the same effective batch.
    fn step_with_retry(
        &self,
        trainer: &mut Trainer,
        xs: &[tch::Tensor],
        ys: &tch::Tensor,
        global: i64,
    ) -> Result<StepOutcome, RunError> {
        loop {
            let stop = self.stop.raised();
            let msg = match crate::fault::catch_torch(|| trainer.train_step(xs, ys, global, stop)) {
                Ok(step) => return Ok(step?),
                Err(caught) if caught.is_oom() => caught.message(),
                Err(caught) => {
                    let step = trainer.position.step + 1;
                    return Err(RunError::Libtorch {
                        during: format!("training step {step}"),
                        message: caught.message(),
                    });
                }
            };
            crate::memory::cuda::empty_cache();
            let n = ys.size()[0];
            let step = trainer.position.step + 1;
            if !trainer.halve_micro_batch(n) {
                return Err(RunError::OutOfMemory { detail: format!("training step {step}: {msg}") });
            }
            let accum = trainer.grad_accum_steps;
            let micro = (n + accum - 1) / accum;
            tracing::warn!(
                step,
                grad_accum_steps = accum,
                micro_batch = micro,
                "out of memory: halving the micro-batch, doubling gradient accumulation"
            );
            self.append(&MetricsLine::Event(EventMetrics {
                step,
                event: "oom_recovery".into(),
                grad_accum_steps: accum as u32,
                micro_batch: micro as u32,
                detail: msg,
            }))?;
        }
    }
}

fn step_line(trainer: &Trainer, epoch: u32, step: &StepOutcome, rate: f64, run_start: Instant) -> MetricsLine {
    let device_stats = match trainer.device {
        tch::Device::Cuda(i) => crate::memory::cuda::stats(i),
        _ => None,
    };
    MetricsLine::Step(StepMetrics {
        epoch,
        step: trainer.position.step,
        loss: step.loss,
        lr: step.lr,
        samples_per_sec: rate,
        elapsed_seconds: run_start.elapsed().as_secs_f64(),
        host_rss_bytes: crate::memory::probe::host().rss,
        device_allocated_bytes: device_stats.map(|s| s.allocated),
        device_peak_allocated_bytes: device_stats.map(|s| s.peak_allocated),
    })
}

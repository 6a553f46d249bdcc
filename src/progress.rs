//! What a person watching a run sees: a progress bar per epoch when stderr is a terminal,
//! a plain line every `log_every_n_steps` steps otherwise (CI, job logs).

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress through one epoch.
pub struct Progress {
    bar: Option<ProgressBar>,
    epoch: u32,
    epochs: u32,
    total: u64,
    done: u64,
    samples: u64,
    steps: u64,
    start: Instant,
    log_every: u64,
}

impl Progress {
    /// Starts an epoch of `total` steps of which `done` are already behind (a resumed run).
    pub fn start(epoch: u32, epochs: u32, total: u64, done: u64, log_every: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({per_sec}, eta {eta})")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(format!("{epoch}/{epochs}"));
            bar.set_position(done);
            bar
        });
        Self { bar, epoch, epochs, total, done, samples: 0, steps: 0, start: Instant::now(), log_every }
    }

    /// Records a step; returns the samples per second so far this epoch.
    pub fn step(&mut self, global_step: u64, loss: f64, lr: f64, samples: usize) -> f64 {
        self.done += 1;
        self.steps += 1;
        self.samples += samples as u64;
        let elapsed = self.start.elapsed().as_secs_f64().max(f64::EPSILON);
        let rate = self.samples as f64 / elapsed;
        match &self.bar {
            Some(bar) => {
                bar.set_position(self.done);
                bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {rate:.0} samples/s"));
            }
            None if global_step.is_multiple_of(self.log_every) => {
                let steps_left = self.total.saturating_sub(self.done) as f64;
                let eta = steps_left * elapsed / self.steps as f64;
                tracing::info!(
                    epoch = self.epoch,
                    of = self.epochs,
                    step = global_step,
                    batch = format_args!("{}/{}", self.done, self.total),
                    loss = format_args!("{loss:.4}"),
                    lr = format_args!("{lr:.3e}"),
                    samples_per_sec = format_args!("{rate:.0}"),
                    eta_seconds = format_args!("{eta:.0}"),
                    "training"
                );
            }
            None => {}
        }
        rate
    }

    /// Ends the epoch's display.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

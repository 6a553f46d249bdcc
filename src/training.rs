//! The training loop: epochs of seeded mini-batches, evaluation, and the state a
//! checkpoint captures.
//!
//! Reproducibility: the batch order of an epoch is a function of (seed, epoch) (see
//! [`crate::data::epoch_batches`]), and libtorch's generators are re-seeded from
//! (seed, step) before every step, so any random draw inside a step (dropout, say) is a
//! function of its position. A run resumed at an epoch boundary therefore repeats exactly
//! what an uninterrupted run does, with no generator state to carry.

use std::collections::HashMap;
use std::time::Instant;

use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{Meta, RngState, FORMAT_VERSION, OPTIMIZER_PREFIX};
use crate::config::Config;
use crate::data::{epoch_batches, Dataset, Split};
use crate::model::{self, Model};
use crate::optim::{self, Optimizer, Param};

/// Name of the reproducibility scheme above, stored in checkpoints.
pub const RNG_SCHEME: &str = "epoch-order:chacha8(seed,stream=epoch); torch:manual_seed(mix(seed,step))";

/// Results of one epoch's training steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochStats {
    /// Mean loss over the epoch's examples.
    pub train_loss: f64,
    /// Wall time of the steps.
    pub seconds: f64,
    /// Examples seen.
    pub samples: usize,
}

/// Results of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalStats {
    /// Mean loss over the split.
    pub loss: f64,
    /// Fraction classified correctly.
    pub accuracy: f64,
}

/// A model, its optimiser and the position in the run.
pub struct Trainer {
    /// Holds the model's parameters.
    pub vs: nn::VarStore,
    model: Model,
    /// The optimiser over the model's trainable parameters.
    pub optimizer: Box<dyn Optimizer>,
    /// The device everything lives on.
    pub device: Device,
    /// Epochs completed.
    pub epoch: u32,
    /// Optimiser steps taken.
    pub step: u64,
    /// Batches of epoch `epoch + 1` already trained.
    pub batches_into_epoch: u64,
    /// Sum of per-example losses over those batches.
    pub partial_loss_sum: f64,
    /// Mean training loss of the last completed epoch (NaN before the first).
    pub last_train_loss: f64,
    /// Evaluation after the last completed epoch (NaN before the first).
    pub last_eval: EvalStats,
    seed: u64,
    batch_size: usize,
}

impl Trainer {
    /// Builds the configured model (initialised from `training.seed`) and optimiser on `device`.
    pub fn new(cfg: &Config, data: &Dataset, device: Device) -> Self {
        tch::manual_seed(cfg.training.seed as i64);
        let vs = nn::VarStore::new(device);
        let model = model::build(&cfg.model, &vs.root(), data.image_shape, data.classes);
        let params = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(name, tensor)| Param { name, tensor })
            .collect();
        let optimizer = optim::build(&cfg.training.optimizer, params);
        Self {
            vs,
            model,
            optimizer,
            device,
            epoch: 0,
            step: 0,
            batches_into_epoch: 0,
            partial_loss_sum: 0.0,
            last_train_loss: f64::NAN,
            last_eval: EvalStats { loss: f64::NAN, accuracy: f64::NAN },
            seed: cfg.training.seed,
            batch_size: cfg.training.batch_size as usize,
        }
    }

    /// The model's variables by name (shallow clones sharing storage).
    pub fn variables(&self) -> HashMap<String, Tensor> {
        self.vs.variables()
    }

    /// Trains the rest of the epoch after `self.epoch` (all of it, unless resumed mid-epoch),
    /// checking `stop` after every step. Returns `None` when stopped before the epoch's end
    /// (the position is kept, for a mid-epoch checkpoint), else the epoch's statistics.
    pub fn train_epoch(&mut self, train: &Split, stop: &dyn Fn() -> bool) -> Option<EpochStats> {
        let epoch = self.epoch + 1;
        let _span = tracing::info_span!("epoch", epoch).entered();
        let start = Instant::now();
        let batches = epoch_batches(train.len(), self.batch_size, self.seed, epoch);
        let mut samples = 0;
        for indices in batches.iter().skip(self.batches_into_epoch as usize) {
            tch::manual_seed(mix(self.seed, self.step));
            let (xs, ys) = train.batch(indices, self.device);
            let loss = self.model.forward_t(&xs, true).cross_entropy_for_logits(&ys);
            self.optimizer.zero_grad();
            loss.backward();
            self.optimizer.step();
            self.step += 1;
            self.batches_into_epoch += 1;
            samples += indices.len();
            let loss = loss.double_value(&[]);
            self.partial_loss_sum += loss * indices.len() as f64;
            tracing::debug!(step = self.step, batch = self.batches_into_epoch, of = batches.len(), loss, "step");
            if stop() && (self.batches_into_epoch as usize) < batches.len() {
                return None;
            }
        }
        let stats = EpochStats {
            train_loss: self.partial_loss_sum / train.len() as f64,
            seconds: start.elapsed().as_secs_f64(),
            samples,
        };
        self.epoch = epoch;
        self.batches_into_epoch = 0;
        self.partial_loss_sum = 0.0;
        Some(stats)
    }

    /// Loss and accuracy on `split`, without gradients.
    pub fn evaluate(&self, split: &Split) -> EvalStats {
        let _guard = tch::no_grad_guard();
        let n = split.len();
        let (mut loss_sum, mut correct) = (0.0, 0.0);
        let indices: Vec<i64> = (0..n as i64).collect();
        for chunk in indices.chunks(self.batch_size.max(256)) {
            let (xs, ys) = split.batch(chunk, self.device);
            let logits = self.model.forward_t(&xs, false);
            loss_sum += logits.cross_entropy_for_logits(&ys).double_value(&[]) * chunk.len() as f64;
            correct +=
                logits.argmax(-1, false).eq_tensor(&ys).to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
        }
        EvalStats { loss: loss_sum / n as f64, accuracy: correct / n as f64 }
    }

    /// The tensors a checkpoint holds: every model variable, sorted by name, and, when
    /// `with_optimizer`, the optimiser's state under [`OPTIMIZER_PREFIX`].
    pub fn checkpoint_tensors(&self, with_optimizer: bool) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self.variables().into_iter().collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        if with_optimizer {
            out.extend(self.optimizer.state().into_iter().map(|(n, t)| (format!("{OPTIMIZER_PREFIX}{n}"), t)));
        }
        out
    }

    /// The metadata of a checkpoint taken now (with optimiser state; the saver clears the
    /// flag for an epoch file that leaves it out). Losses are those of the last completed epoch.
    pub fn checkpoint_meta(&self, config_sha256: &str) -> Meta {
        Meta {
            format_version: FORMAT_VERSION,
            epoch: self.epoch,
            step: self.step,
            batches_into_epoch: self.batches_into_epoch,
            partial_loss_sum: self.partial_loss_sum,
            train_loss: self.last_train_loss,
            val_loss: self.last_eval.loss,
            val_accuracy: self.last_eval.accuracy,
            has_optimizer_state: true,
            optimizer: serde_json::to_value(self.optimizer.config()).expect("plain struct"),
            lr_scheduler: serde_json::json!({ "kind": "constant", "lr": self.optimizer.config().lr }),
            rng: RngState { seed: self.seed, scheme: RNG_SCHEME.into() },
            config_sha256: config_sha256.into(),
            tool_version: format!("train {}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// Restores the position and last losses recorded in a checkpoint's metadata.
    pub fn restore_position(&mut self, meta: &Meta) {
        self.epoch = meta.epoch;
        self.step = meta.step;
        self.batches_into_epoch = meta.batches_into_epoch;
        self.partial_loss_sum = meta.partial_loss_sum;
        self.last_train_loss = meta.train_loss;
        self.last_eval = EvalStats { loss: meta.val_loss, accuracy: meta.val_accuracy };
    }
}

/// A 63-bit seed for libtorch from the run's seed and a step counter (SplitMix64 finaliser,
/// so neighbouring steps get unrelated seeds).
fn mix(seed: u64, step: u64) -> i64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

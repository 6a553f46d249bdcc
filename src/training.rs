//! The training loop: epochs of seeded mini-batches, evaluation, and the state a
//! checkpoint captures.
//!
//! Reproducibility: the batch order of an epoch is a function of (seed, epoch) (see
//! [`crate::data::EpochOrder`]), and libtorch's generators are re-seeded from
//! (seed, step) before every step, so any random draw inside a step (dropout, say) is a
//! function of its position. A run resumed at an epoch boundary therefore repeats exactly
//! what an uninterrupted run does, with no generator state to carry.

use std::collections::HashMap;

use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::state::{Progress, Shard, ShardPiece, Standing, TrainingState};
use crate::checkpoint::Position;
use crate::config::{Config, OnNonfinite, ScheduleConfig};
use crate::data::{shard, DataError, Dataset, EpochOrder, Pass, Split, Task};
use crate::distributed::engine::Pending;
use crate::distributed::{Dist, DistError, Stage, Zero};
use crate::model::{self, Model, ModelError};
use crate::optim::{self, Optimizer, Param};

/// Name of the reproducibility scheme above, stored in checkpoints.
pub const RNG_SCHEME: &str = "epoch-order:feistel6(keys:chacha8(seed,stream=epoch)); torch:manual_seed(mix(seed,step))";

/// The batches of an epoch this process trains on: the epoch's order
/// ([`EpochOrder`], constant memory), and in a data-parallel job this rank's share of each.
#[derive(Debug, Clone, Copy)]
pub struct EpochPlan {
    order: EpochOrder,
    /// `(rank, world)` of a data-parallel job.
    share: Option<(usize, usize)>,
}

impl EpochPlan {
    /// Number of batches.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the epoch has no batch.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The examples of batch `b` on every rank together.
    pub fn global_len(&self, b: usize) -> usize {
        self.order.batch(b).len()
    }

    /// This process's examples of batch `b`.
    pub fn batch(&self, b: usize) -> Vec<i64> {
        let batch = self.order.batch(b);
        match self.share {
            Some((rank, world)) => shard(&batch, rank, world),
            None => batch,
        }
    }
}

/// What one optimiser step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// Mean loss over the batch.
    pub loss: f64,
    /// Examples in the batch.
    pub samples: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Whether the update was applied (not when the loss was not finite, unless
    /// `training.on_nonfinite` is `continue`).
    pub applied: bool,
    /// Whether a stop was asked for, here or (in a data-parallel job) on any rank: the
    /// flag rides on the step's one small all-reduce, so every rank gets the same answer.
    pub stop: bool,
}

/// Results of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalStats {
    /// Mean loss over the split.
    pub loss: f64,
    /// Fraction of classes (or next bytes) predicted right; NaN for regression.
    pub accuracy: f64,
}

/// Why an evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A streamed split's example could not be read.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The ranks' sums could not be gathered.
    #[error(transparent)]
    Dist(#[from] DistError),
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
    /// Where the run stands (what a checkpoint records).
    pub position: Position,
    /// Mean training loss of the last completed epoch (NaN before the first).
    pub last_train_loss: f64,
    /// Evaluation after the last completed epoch (NaN before the first).
    pub last_eval: EvalStats,
    seed: u64,
    batch_size: usize,
    task: Task,
    trainable: Vec<Tensor>,
    schedule: ScheduleConfig,
    base_lr: f64,
    total_steps: u64,
    batches_per_epoch: u64,
    bf16: bool,
    /// Micro-batches per optimiser step (doubled when a step runs out of memory).
    pub grad_accum_steps: i64,
    clip_grad_norm: Option<f64>,
    on_nonfinite: OnNonfinite,
    /// The data-parallel job this rank belongs to, if any (see `crate::run::ranks`): its
    /// share of each batch, gradients and losses summed over the ranks.
    pub dist: Option<std::rc::Rc<Dist>>,
    /// With sharded state (`distributed.shard`), this rank's share: the optimiser then steps
    /// only its pieces of the parameters (see `crate::distributed::Zero`).
    zero: Option<Zero>,
    /// Whether the per-rank state after the first step was reported.
    reported_state: bool,
}

impl Trainer {
    /// Builds the configured model (initialised from `training.seed`) and optimiser on `device`.
    pub fn new(cfg: &Config, data: &Dataset, device: Device) -> Result<Self, ModelError> {
        tch::manual_seed(cfg.training.seed as i64);
        let vs = nn::VarStore::new(device);
        // A micro-batch of the configured size (all the data if it holds fewer), for a
        // TorchScript module to be tried on as training will run it.
        let micro = cfg.training.batch_size.div_ceil(cfg.training.grad_accum_steps.max(1)) as usize;
        let probe_rows: Vec<i64> = (0..data.train.len().min(micro.max(1)) as i64).collect();
        let (probe, probe_targets) = data
            .train
            .batch(&probe_rows, Pass { seed: cfg.training.seed, epoch: 1 }, device)
            .map_err(|e| ModelError::Data(Box::new(e)))?;
        let model = model::build(&cfg.model, &vs.root(), data.task, &data.input_shape, Some((&probe, &probe_targets)))?;
        let params = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(name, tensor)| Param::whole(name, tensor))
            .collect();
        let optimizer = optim::build(&cfg.training.optimizer, params);
        let trainable = vs.trainable_variables();
        let batches_per_epoch = cfg.training.batches_per_epoch(data.train.len());
        Ok(Self {
            vs,
            model,
            task: data.task,
            bf16: cfg.training.precision == crate::config::Precision::Bf16,
            optimizer,
            device,
            position: Position::default(),
            last_train_loss: f64::NAN,
            last_eval: EvalStats { loss: f64::NAN, accuracy: f64::NAN },
            seed: cfg.training.seed,
            batch_size: cfg.training.batch_size as usize,
            trainable,
            schedule: cfg.training.schedule.clone(),
            base_lr: cfg.training.optimizer.lr,
            total_steps: u64::from(cfg.training.epochs) * batches_per_epoch,
            batches_per_epoch,
            grad_accum_steps: i64::from(cfg.training.grad_accum_steps),
            clip_grad_norm: cfg.training.clip_grad_norm,
            on_nonfinite: cfg.training.on_nonfinite,
            dist: None,
            zero: None,
            reported_state: false,
        })
    }

    /// Optimiser steps in an epoch of this run's data.
    pub fn batches_per_epoch(&self) -> u64 {
        self.batches_per_epoch
    }

    /// The model's variables by name (shallow clones sharing storage).
    pub fn variables(&self) -> HashMap<String, Tensor> {
        self.vs.variables()
    }

    /// The batches of the epoch after `self.epoch`, all of them (a resumed run skips the
    /// first `batches_into_epoch`); in a data-parallel job, this rank's share of each.
    pub fn epoch_plan(&self, examples: usize) -> EpochPlan {
        let order = EpochOrder::new(examples, self.batch_size, self.seed, self.position.epoch + 1);
        EpochPlan { order, share: self.dist.as_ref().map(|d| (d.rank() as usize, d.world() as usize)) }
    }

    /// One optimiser step on a batch already on the device: the schedule's learning rate,
    /// `grad_accum_steps` micro-batches whose gradients add up to the full batch's, optional
    /// clipping, the update. Advances the step and position counters.
    ///
    /// In a data-parallel job the batch is this rank's share: after the last micro-batch's
    /// backward (none before it, as DDP's `no_sync`), the loss and the example count are
    /// summed over the ranks, and the gradients too, each rank's weighted by its share of
    /// the examples, so every rank applies the gradient of the whole global batch's mean.
    ///
    /// `global` is the step's whole batch (every rank's share), `stop` whether a stop was
    /// asked for on this rank; the outcome says whether on any.
    pub fn train_step(
        &mut self,
        xs: &[Tensor],
        ys: &Tensor,
        global: i64,
        stop: bool,
    ) -> Result<StepOutcome, DistError> {
        tch::manual_seed(mix(self.seed, self.position.step));
        let lr = self.schedule.lr_at(self.position.step, self.base_lr, self.total_steps);
        self.optimizer.set_lr(lr);
        self.optimizer.zero_grad();
        if self.zero.is_some() {
            // The optimiser zeroes only its pieces' gradients; backward fills the wholes.
            zero_grads(&self.trainable);
        }
        let n = ys.size()[0];
        let micro = (n + self.grad_accum_steps - 1) / self.grad_accum_steps;
        if let Some(d) = &self.dist {
            d.begin_step(self.position.step, global);
        }
        crate::fault::check_step(self.position.step + 1);
        let mut loss_sum = 0.0;
        let mut sums = None;
        // A rank's share of a short last batch can be empty: no forward, zero gradients.
        let y_parts = if n == 0 { Vec::new() } else { ys.split(micro, 0) };
        let input_parts: Vec<Vec<Tensor>> =
            if n == 0 { Vec::new() } else { xs.iter().map(|x| x.split(micro, 0)).collect() };
        for (i, y) in y_parts.iter().enumerate() {
            let x: Vec<Tensor> = input_parts.iter().map(|parts| parts[i].shallow_clone()).collect();
            let m = y.size()[0];
            let loss = self.autocast(|| {
                let out = self.model.forward(&x, Some(y), true);
                out.loss.unwrap_or_else(|| model::task_loss(self.task, &out.logits, y))
            });
            loss_sum += loss.double_value(&[]) * m as f64;
            let last = i + 1 == y_parts.len();
            if last {
                sums = self.start_sums(loss_sum, n, stop)?;
            }
            // Each micro-batch's mean, weighted by its share, sums to the whole batch's mean.
            match &self.dist {
                Some(d) => d.backward(&loss, m, n, last)?,
                None if m == n => loss.backward(),
                None => (&loss * (m as f64 / n as f64)).backward(),
            }
        }
        if let (Some(d), true) = (&self.dist, y_parts.is_empty()) {
            sums = self.start_sums(loss_sum, n, stop)?;
            d.backward_nothing(&self.trainable)?;
        }
        // One small all-reduce a step: the loss, the examples and the stop flag.
        let (loss_sum, total, stop) = match (&self.dist, sums) {
            (Some(d), Some(pending)) => three(d.finish_sum(pending)?),
            (Some(d), None) => three(d.sum(&step_sums(loss_sum, n, stop))?),
            (None, _) => (loss_sum, n as f64, stop),
        };
        let loss = loss_sum / total;
        let samples = total as usize;
        if !loss.is_finite() && self.on_nonfinite != OnNonfinite::Continue {
            self.optimizer.zero_grad();
            if self.on_nonfinite == OnNonfinite::SkipStep {
                // The batch is used up; its loss stays out of the epoch's mean.
                self.position.step += 1;
                self.position.batches_into_epoch += 1;
            }
            return Ok(StepOutcome { loss, samples, lr, applied: false, stop });
        }
        let zero2 = self.zero.as_ref().filter(|z| z.stage() == Stage::OptimizerAndGradients);
        match (&self.dist, zero2) {
            (Some(d), Some(z)) => z.reduce_scatter(d, n as f64 / total)?,
            (Some(d), None) if !d.overlaps() => d.reduce_gradients(&self.trainable, n as f64 / total)?,
            _ => {}
        }
        match (self.clip_grad_norm, &self.dist, zero2) {
            (Some(max_norm), Some(d), Some(z)) => {
                z.clip_grad_norm(d, max_norm)?;
            }
            (Some(max_norm), _, _) => {
                clip_grad_norm(&self.trainable, max_norm);
            }
            _ => {}
        }
        self.optimizer.step();
        if let (Some(d), Some(z)) = (&self.dist, &self.zero) {
            z.allgather(d)?;
        }
        self.report_state();
        self.position.step += 1;
        self.position.batches_into_epoch += 1;
        self.position.partial_loss_sum += loss_sum;
        Ok(StepOutcome { loss, samples, lr, applied: true, stop })
    }

    /// With DDP's Reducer, the step's small all-reduce (loss, examples, stop flag) starts
    /// before the last backward and runs with it, so its wait hides in the Reducer's (an
    /// out-of-memory error in that backward cannot be retried on one rank anyway). Without
    /// the Reducer it runs after backward (`None` here), which keeps a backward that runs
    /// out of memory retryable on this rank alone.
    fn start_sums(&self, loss_sum: f64, n: i64, stop: bool) -> Result<Option<Pending>, DistError> {
        match &self.dist {
            Some(d) if d.overlaps() => Ok(Some(d.start_sum(&step_sums(loss_sum, n, stop))?)),
            _ => Ok(None),
        }
    }

    /// Shards the optimiser's state (and with ZeRO-2 the gradients) as `zero` says: the
    /// optimiser is rebuilt over this rank's pieces, with no state yet (load it after).
    pub fn shard(&mut self, zero: Zero) {
        let cfg = self.optimizer.config().clone();
        self.optimizer = optim::build(&cfg, zero.optimizer_params());
        self.zero = Some(zero);
    }

    /// Which state is sharded, if any.
    pub fn shard_stage(&self) -> Option<Stage> {
        self.zero.as_ref().map(Zero::stage)
    }

    /// This rank's pieces of sharded state, when sharded.
    pub fn shard_pieces(&self) -> Option<Vec<ShardPiece>> {
        self.zero.as_ref().map(Zero::owned)
    }

    /// Logs, once, after the first step of a data-parallel job, the bytes of parameters,
    /// gradients and optimiser state this rank holds (what sharding saves).
    fn report_state(&mut self) {
        let Some(d) = self.dist.as_ref().filter(|_| !self.reported_state) else { return };
        self.reported_state = true;
        let bytes = |ts: &[Tensor]| -> u64 { ts.iter().map(crate::checkpoint::tensors::tensor_bytes).sum() };
        let gradient_bytes = match &self.zero {
            Some(z) => z.gradient_bytes(),
            None => bytes(&self.trainable.iter().map(Tensor::grad).filter(Tensor::defined).collect::<Vec<_>>()),
        };
        let state: Vec<Tensor> = self.optimizer.state().into_iter().map(|(_, t)| t).collect();
        tracing::info!(
            rank = d.rank(),
            shard = self.zero.as_ref().map_or("none", |z| z.stage().name()),
            parameter_bytes = bytes(&self.trainable),
            gradient_bytes,
            optimizer_state_bytes = bytes(&state),
            "per-rank state after the first step"
        );
    }

    /// Runs `f` under bfloat16 autocast when `training.precision` is `bf16` (CUDA).
    fn autocast<T>(&self, f: impl FnOnce() -> T) -> T {
        if self.bf16 {
            tch::autocast(true, f)
        } else {
            f()
        }
    }

    /// Halves the micro-batch for batches of `n` examples (doubling the accumulation), so
    /// the effective batch stays the same; false when micro-batches are already single
    /// examples.
    pub fn halve_micro_batch(&mut self, n: i64) -> bool {
        if (n + self.grad_accum_steps - 1) / self.grad_accum_steps <= 1 {
            return false;
        }
        self.grad_accum_steps = (self.grad_accum_steps * 2).min(n);
        true
    }

    /// Closes the epoch after its last step: advances the epoch counter and returns the
    /// mean training loss over its `examples`.
    pub fn finish_epoch(&mut self, examples: usize) -> f64 {
        let loss = self.position.partial_loss_sum / examples as f64;
        self.position = Position { epoch: self.position.epoch + 1, step: self.position.step, ..Position::default() };
        self.last_train_loss = loss;
        loss
    }

    /// The pass the epoch about to be trained reads its examples in (augmentations draw
    /// from it).
    pub fn train_pass(&self) -> Pass {
        Pass { seed: self.seed, epoch: self.position.epoch + 1 }
    }

    /// The pass an evaluation now reads its examples in: that of the last epoch trained.
    fn eval_pass(&self) -> Pass {
        Pass { seed: self.seed, epoch: self.position.epoch.max(1) }
    }

    /// Loss and accuracy on `split`, without gradients (accuracy is NaN for regression); an
    /// error when a streamed split's example cannot be read.
    ///
    /// In a data-parallel job the split is sharded: rank 0's buffers are first copied to
    /// every rank ([`Self::sync_buffers`]), each rank evaluates a contiguous share of the
    /// examples, and the sums of loss, hits and counts are all-reduced, so every rank gets
    /// the figures one process would (to the rounding of the sums' order).
    pub fn evaluate(&self, split: &Split) -> Result<EvalStats, EvalError> {
        let _guard = tch::no_grad_guard();
        self.sync_buffers()?;
        let n = split.len();
        let (mut loss_sum, mut correct, mut counted) = (0.0, 0.0, 0.0);
        let (lo, hi) = match &self.dist {
            Some(d) => {
                let (r, w) = (d.rank() as usize, d.world() as usize);
                (n * r / w, n * (r + 1) / w)
            }
            None => (0, n),
        };
        let indices: Vec<i64> = (lo as i64..hi as i64).collect();
        for chunk in indices.chunks(self.batch_size.max(256)) {
            let (xs, ys) = split.batch(chunk, self.eval_pass(), self.device)?;
            let (out, own_loss, batch_loss) = self.autocast(|| {
                let out = self.model.forward(&xs, Some(&ys), false);
                let own = out.loss.is_some();
                let l = out.loss.unwrap_or_else(|| model::task_loss(self.task, &out.logits, &ys));
                (out.logits, own, l)
            });
            loss_sum += batch_loss.double_value(&[]) * chunk.len() as f64;
            if !matches!(self.task, Task::Regression { .. }) {
                // A language model that computes its own loss from unshifted labels (Hugging
                // Face's convention) predicts at position t the token at t + 1.
                let (out, ys) = match self.task {
                    Task::LanguageModel { .. } if own_loss => {
                        let t = ys.size()[1];
                        (out.narrow(1, 0, t - 1), ys.narrow(1, 1, t - 1))
                    }
                    _ => (out, ys),
                };
                let hits = out.argmax(-1, false).eq_tensor(&ys);
                correct += hits.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
                counted += hits.numel() as f64;
            }
        }
        if let Some(d) = &self.dist {
            if let [l, c, k] = d.sum(&[loss_sum, correct, counted])?[..] {
                (loss_sum, correct, counted) = (l, c, k);
            }
        }
        Ok(EvalStats { loss: loss_sum / n as f64, accuracy: correct / counted })
    }

    /// In a data-parallel job, copies rank 0's buffers (the variables that are not trained:
    /// BatchNorm's running statistics) to every rank, as DDP's `broadcast_buffers` does
    /// before each forward; called at each evaluation and save, so that every rank
    /// evaluates with the buffers a checkpoint holds. Rank 0's copy rather than an average:
    /// an average of running variances is not the variance of the union either, rank 0's
    /// is what PyTorch users get from DDP, and it costs one broadcast. A no-op without
    /// buffers or a job.
    pub fn sync_buffers(&self) -> Result<(), DistError> {
        let Some(d) = &self.dist else { return Ok(()) };
        let mut buffers = self.untrained(self.variables().into_iter().collect());
        if buffers.is_empty() {
            return Ok(());
        }
        buffers.sort_by(|a, b| a.0.cmp(&b.0));
        let tensors: Vec<Tensor> = buffers.into_iter().map(|(_, t)| t).collect();
        d.broadcast(&tensors)
    }

    /// Those of `vars` that are not trained (buffers, frozen parameters): told by storage,
    /// since a name can alias a trained tensor.
    fn untrained(&self, vars: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
        let trained: std::collections::HashSet<usize> = self.trainable.iter().map(|t| t.data_ptr() as usize).collect();
        vars.into_iter().filter(|(_, t)| !trained.contains(&(t.data_ptr() as usize))).collect()
    }

    /// The state a checkpoint takes now: every model variable, sorted by name, the
    /// optimiser's state by slot key, and where the run stands (losses of the last completed
    /// epoch). What goes into which file is the checkpoint plan's to decide.
    pub fn checkpoint_state(&self) -> TrainingState {
        let mut model: Vec<(String, Tensor)> = self.variables().into_iter().collect();
        model.sort_by(|a, b| a.0.cmp(&b.0));
        let progress = Progress {
            standing: Standing {
                position: self.position,
                train_loss: self.last_train_loss,
                val_loss: self.last_eval.loss,
                val_accuracy: self.last_eval.accuracy,
            },
            batch_size: self.batch_size as u32,
            optimizer: serde_json::to_value(self.optimizer.config()).expect("plain struct"),
            lr_scheduler: self.schedule.state(self.position.step, self.base_lr, self.total_steps),
            seed: self.seed,
            rng_scheme: RNG_SCHEME,
        };
        let Some(zero) = &self.zero else {
            return TrainingState { model, optimizer: self.optimizer.state(), progress, shard: None };
        };
        // Sharded: this rank's pieces of the trainable parameters, and on rank 0 every
        // variable that is not sharded (buffers, frozen parameters), whole.
        let pieces = zero.owned();
        let mut own = if zero.rank() == 0 { self.untrained(model) } else { Vec::new() };
        own.extend(zero.parameter_pieces());
        own.sort_by(|a, b| a.0.cmp(&b.0));
        let dist = self.dist.as_ref().expect("sharded only in a job");
        // `step` is kept once, by the rank holding the parameter's first element.
        let first: std::collections::HashSet<&str> =
            pieces.iter().filter(|p| p.offset == 0).map(|p| p.name.as_str()).collect();
        let optimizer = self
            .optimizer
            .state()
            .into_iter()
            .filter(|(k, _)| match k.rsplit_once('/') {
                Some((param, "step")) => first.contains(param),
                _ => true,
            })
            .collect();
        let shard = Shard { rank: dist.rank(), world: dist.world(), pieces };
        TrainingState { model: own, optimizer, progress, shard: Some(shard) }
    }

    /// Whether every weight is finite (no checkpoint is written otherwise).
    pub fn weights_finite(&self) -> bool {
        self.first_non_finite().is_none()
    }

    /// The first variable (by name) holding a value that is not finite, and whether it is
    /// `NaN` or `infinite`.
    pub fn first_non_finite(&self) -> Option<(String, &'static str)> {
        let _guard = tch::no_grad_guard();
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars.into_iter()
            .find(|(_, t)| t.is_floating_point() && t.isfinite().all().int64_value(&[]) == 0)
            .map(|(name, t)| (name, if t.isnan().any().int64_value(&[]) != 0 { "NaN" } else { "infinite" }))
    }

    /// Restores the position and last losses a checkpoint recorded.
    pub fn restore(&mut self, s: &Standing) {
        self.position = s.position;
        self.last_train_loss = s.train_loss;
        self.last_eval = EvalStats { loss: s.val_loss, accuracy: s.val_accuracy };
    }
}

/// What each rank adds to the step's one small all-reduce: its loss sum, its examples,
/// and 1 when it asks to stop.
fn step_sums(loss_sum: f64, n: i64, stop: bool) -> [f64; 3] {
    [loss_sum, n as f64, f64::from(u8::from(stop))]
}

/// The step's three sums: the loss, the examples, whether any rank asked to stop.
fn three(sums: Vec<f64>) -> (f64, f64, bool) {
    match sums[..] {
        [sum, total, stops] => (sum, total, stops > 0.0),
        _ => unreachable!("a sum of three values is three values"),
    }
}

/// Zeroes every defined gradient of `params`.
fn zero_grads(params: &[Tensor]) {
    for p in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

/// Scales gradients so that their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` does (coefficient `max_norm / (norm + 1e-6)`, capped at 1).
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> f64 {
    let _guard = tch::no_grad_guard();
    let grads: Vec<Tensor> = params.iter().map(Tensor::grad).filter(Tensor::defined).collect();
    if grads.is_empty() {
        return 0.0;
    }
    let norms: Vec<Tensor> = grads.iter().map(|g| g.norm().to_kind(Kind::Double)).collect();
    let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        for mut g in grads {
            let _ = g.g_mul_scalar_(coef);
        }
    }
    total
}

/// A 63-bit seed for libtorch from the run's seed and a step counter (SplitMix64 finaliser,
/// so neighbouring steps get unrelated seeds).
fn mix(seed: u64, step: u64) -> i64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gradients (3, 4) and (0, 12) have global norm 13: clipping to 6.5 halves them (less
    /// PyTorch's 1e-6 in the denominator); clipping to 20 leaves them alone.
    #[test]
    fn clipping_scales_the_global_norm() {
        let params: Vec<Tensor> =
            (0..2).map(|_| Tensor::zeros([2], tch::kind::FLOAT_CPU).set_requires_grad(true)).collect();
        let grads = [Tensor::from_slice(&[3.0f32, 4.0]), Tensor::from_slice(&[0.0f32, 12.0])];
        let loss = params.iter().zip(&grads).map(|(p, g)| (p * g).sum(Kind::Float)).reduce(|a, b| a + b).unwrap();
        loss.backward();
        assert!((clip_grad_norm(&params, 20.0) - 13.0).abs() < 1e-6);
        assert_eq!(Vec::<f32>::try_from(params[0].grad()).unwrap(), [3.0, 4.0]);
        assert!((clip_grad_norm(&params, 6.5) - 13.0).abs() < 1e-6);
        let g: Vec<f32> = Vec::try_from(params[1].grad()).unwrap();
        assert!((g[1] - 6.0).abs() < 1e-5, "{g:?}");
    }

    #[test]
    fn seeds_of_neighbouring_steps_differ() {
        let seeds: std::collections::HashSet<i64> = (0..1000).map(|s| mix(42, s)).collect();
        assert_eq!(seeds.len(), 1000);
        assert!(seeds.iter().all(|s| *s >= 0));
    }
}

//! Where a run starts from: finding and ranking checkpoints, loading each with the strategy
//! the checkpoint layer plans (stepping down on out-of-memory), and what to restore.
//!
//! Every candidate is opened once: the file ranked is the file loaded. The decisions are
//! pure functions ([`check_position`] here, and the checkpoint plan layer's
//! [`restore_optimizer`] and strategy choice) tested without training.

use std::path::PathBuf;
use std::time::Instant;

use super::error::{PositionError, RunError};
use super::job::PlannedConfig;
use crate::checkpoint::import::{self, Keeps};
use crate::checkpoint::load::{is_out_of_memory, Unloaded};
use crate::checkpoint::plan::load::{restore_optimizer, OptimizerRestore};
use crate::checkpoint::state::Standing;
use crate::checkpoint::tensors::tensor_bytes;
use crate::checkpoint::{self, store, CheckpointError, CheckpointFile, FileKind, Meta, Strategy};
use crate::config::{Config, ResumeSpec};
use crate::guide::install_optimizer_state;
use crate::training::{Trainer, RNG_SCHEME};

/// Where a run starts from, decided under the run folder's lock from metadata alone.
pub enum ResumePlan {
    /// From scratch.
    Fresh,
    /// From these checkpoints, open, best first (`auto` tries each until one loads).
    From(Vec<CheckpointFile>),
}

impl std::fmt::Debug for ResumePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fresh => f.write_str("fresh"),
            Self::From(files) => f.debug_list().entries(files.iter().map(|c| c.path().display())).finish(),
        }
    }
}

/// Decides where to resume from, per `run.resume`.
pub fn plan(cfg: &PlannedConfig, ckpt_dir: &std::path::Path) -> Result<ResumePlan, RunError> {
    match &cfg.run.resume {
        ResumeSpec::Never => {
            if store::list(ckpt_dir)?.is_empty() {
                Ok(ResumePlan::Fresh)
            } else {
                Err(RunError::ExistingRun { dir: ckpt_dir.to_path_buf() })
            }
        }
        ResumeSpec::Path(p) => {
            Ok(ResumePlan::From(vec![CheckpointFile::open(p).map_err(|e| RunError::ResumeFrom(e.into()))?]))
        }
        ResumeSpec::Auto => {
            let found = store::candidates(ckpt_dir)?;
            for e in &found.unreadable {
                tracing::warn!("skipping unreadable checkpoint: {e}");
            }
            if found.loadable.is_empty() {
                Ok(ResumePlan::Fresh)
            } else {
                Ok(ResumePlan::From(found.loadable))
            }
        }
    }
}

/// Checks that a checkpoint's position fits this run's epochs: a checkpoint taken
/// mid-epoch resumes at its batch, which only means the same samples with the same
/// `training.batch_size` and data. `batches` is the epoch's batch count now.
pub fn check_position(meta: &Meta, batch_size: u32, batches: u64) -> Result<(), PositionError> {
    let p = &meta.position;
    if p.batches_into_epoch == 0 {
        return Ok(());
    }
    let (batches_into_epoch, epoch) = (p.batches_into_epoch, p.epoch + 1);
    if let Some(saved) = meta.batch_size.filter(|&b| b != batch_size) {
        return Err(PositionError::BatchSize { batches_into_epoch, epoch, saved, now: batch_size });
    }
    if p.batches_into_epoch > batches {
        return Err(PositionError::PastEpochEnd { batches_into_epoch, epoch, batches });
    }
    Ok(())
}

/// Loads the first checkpoint of `plan` that loads. With `auto` a checkpoint that fails is
/// reported and the next one tried; an explicit path must load. The loading strategy is
/// chosen per checkpoint from free memory (see [`crate::checkpoint::plan::load`]); an out-of-memory
/// error steps down to the next cheaper strategy.
pub fn resume(
    cfg: &PlannedConfig,
    trainer: &mut Trainer,
    plan: &ResumePlan,
    train_examples: usize,
) -> Result<Option<PathBuf>, RunError> {
    let ResumePlan::From(files) = plan else {
        match &cfg.model.init_from {
            Some(path) => init(cfg, trainer, path)?,
            None => tracing::info!("starting fresh"),
        }
        return Ok(None);
    };
    if let Some(path) = &cfg.model.init_from {
        tracing::info!(init_from = %path.display(), "resuming, so model.init_from is not used: the checkpoints continue from it");
    }
    let explicit = matches!(cfg.run.resume, ResumeSpec::Path(_));
    let batches = cfg.training.batches_per_epoch(train_examples);
    let mut last_error = None;
    for file in files {
        let meta = file.meta_or_imported();
        let result = check_position(&meta, cfg.training.batch_size, batches)
            .map_err(|why| RunError::Position { path: file.path().to_path_buf(), why })
            .and_then(|()| load_planned(cfg, trainer, file).map(|_| ()))
            .and_then(|()| check_finite_weights(trainer, file.path()));
        match result {
            Ok(()) => return Ok(Some(file.path().to_path_buf())),
            // A changed batch size is the user's to settle (the error says how), not a reason
            // to fall back to an older checkpoint and drop progress.
            Err(e) if !explicit && !matches!(e, RunError::OutOfMemory { .. } | RunError::Position { .. }) => {
                tracing::warn!("cannot resume from {}: {e}; trying an older checkpoint", file.path().display());
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    // Every candidate failed: starting over would overwrite them, so stop and say why.
    Err(last_error.expect("plan has at least one file"))
}

/// Chooses a strategy for `file` and loads it into `trainer`, stepping down on
/// out-of-memory errors. Returns the strategy that succeeded.
pub fn load_planned(cfg: &PlannedConfig, trainer: &mut Trainer, file: &CheckpointFile) -> Result<Strategy, RunError> {
    with_planned_strategy(cfg, trainer, file, RunError::from, |trainer, strategy| {
        load_one(cfg, trainer, file, strategy)
    })
    .map(|((), strategy)| strategy)
}

/// Runs `load` (one attempt at loading `file` into `trainer` with a strategy) as
/// [`checkpoint::load::with_plan`] does: with the strategy the memory plan chooses,
/// stepping down on out-of-memory errors. Other errors go through `error`.
fn with_planned_strategy<T>(
    cfg: &Config,
    trainer: &mut Trainer,
    file: &CheckpointFile,
    error: fn(CheckpointError) -> RunError,
    mut load: impl FnMut(&mut Trainer, Strategy) -> Result<T, CheckpointError>,
) -> Result<(T, Strategy), RunError> {
    let model: u64 = trainer.variables().values().map(tensor_bytes).sum();
    let device = trainer.device;
    checkpoint::load::with_plan(&cfg.memory, device, model, file, |strategy| load(trainer, strategy)).map_err(|e| {
        match e {
            Unloaded::OutOfMemory(e) => {
                RunError::OutOfMemory { detail: format!("loading {}: {e}", file.path().display()) }
            }
            Unloaded::Failed(e) => error(e),
        }
    })
}

/// Starts a fresh run from the weights in `path` (`model.init_from`), with the loading
/// strategy the memory plan chooses for them, stepping down on out-of-memory errors as a
/// resume does. The optimizer stays fresh and the position at step 0.
fn init(cfg: &Config, trainer: &mut Trainer, path: &std::path::Path) -> Result<(), RunError> {
    let file = CheckpointFile::open(path).map_err(|e| RunError::InitFrom(e.into()))?;
    let start = Instant::now();
    let (report, strategy) = with_planned_strategy(cfg, trainer, &file, RunError::InitFrom, |trainer, strategy| {
        let options = checkpoint::InitOptions {
            strict: cfg.model.init_strict,
            min_loaded: cfg.model.init_min_loaded,
            prefix_map: &cfg.model.init_prefix_map,
        };
        checkpoint::init_from(&file, &trainer.variables(), trainer.device, strategy, options)
    })?;
    check_finite_weights(trainer, path)?;
    let seconds = format_args!("{:.3}", start.elapsed().as_secs_f64());
    if report.is_exact() {
        tracing::info!(seconds, strategy = strategy.name(), "{}", report.summary());
    } else {
        tracing::warn!(
            seconds,
            strategy = strategy.name(),
            "{} (model.init_strict refuses this); {}",
            report.summary(),
            report.examples()
        );
        let limit = checkpoint::init::TABLE_ROWS;
        tracing::warn!(
            "differences between {} and the model:\n{}",
            path.display(),
            report.table_within(limit).trim_end()
        );
        if report.exceeds(limit) {
            tracing::info!("the first {limit} rows of each kind are shown; RUST_LOG=debug logs the full table");
            tracing::debug!(
                "every difference between {} and the model:\n{}",
                path.display(),
                report.table().trim_end()
            );
        }
    }
    Ok(())
}

/// Refuses weights (and buffers) that are not all finite after loading `path`, naming the
/// first such tensor by name: trained on, they made every loss NaN and the run stop with
/// the learning-rate advice.
fn check_finite_weights(trainer: &Trainer, path: &std::path::Path) -> Result<(), RunError> {
    match trainer.first_non_finite() {
        Some((tensor, what)) => Err(RunError::NonFiniteWeights { path: path.to_path_buf(), tensor, what }),
        None => Ok(()),
    }
}

fn load_one(
    cfg: &Config,
    trainer: &mut Trainer,
    file: &CheckpointFile,
    strategy: Strategy,
) -> Result<(), CheckpointError> {
    let start = Instant::now();
    let meta = file.meta_or_imported();
    let kind = cfg.training.optimizer.kind;
    let restore = restore_optimizer(strategy, &meta, kind.name());
    // A torch.save file's optimizer state is keyed by parameter index, not name: imported
    // below, after the weights, when its numbering lines up with the model's parameters.
    let pieces = trainer.shard_pieces();
    let import = file.kind() == FileKind::Pytorch && strategy.loads_optimizer() && pieces.is_none();
    if file.kind() == FileKind::Pytorch && pieces.is_some() && strategy.loads_optimizer() {
        tracing::warn!(
            "the optimizer starts fresh: a torch.save file's optimizer state is not imported into sharded state \
             (distributed.shard); resume once without sharding to import it"
        );
    }
    if let (OptimizerRestore::Fresh(why), false) = (&restore, import) {
        let switch = if cfg.memory.load_optimizer_state { "" } else { " (memory.load_optimizer_state is false)" };
        tracing::info!("the optimizer starts fresh{switch}: {why}");
    }
    if file.meta().is_none() {
        tracing::warn!(
            path = %file.path().display(),
            epoch = meta.epoch(),
            "not a train checkpoint: loading its weights (names must match the model's), with the optimizer state \
             and step it records where it records them"
        );
    } else if meta.rng.scheme != RNG_SCHEME || meta.rng.seed != cfg.training.seed {
        tracing::warn!(
            saved_seed = meta.rng.seed,
            "checkpoint was made with another seed or RNG scheme: the continuation will not match an uninterrupted run"
        );
    }
    trainer.optimizer.reset_state();
    let vars = trainer.variables();
    let with_optimizer = restore == OptimizerRestore::Restore;
    let whole = with_optimizer && pieces.is_none();
    let (mut outcome, mut state) = checkpoint::load_into(file, &vars, trainer.device, strategy, true, whole)?;
    if let (true, Some(pieces)) = (with_optimizer, &pieces) {
        // Sharded: only this rank's pieces of the state are read.
        state = checkpoint::load::read_optimizer_pieces(file, pieces, trainer.device)?;
        outcome.optimizer_tensors = state.len();
    }
    if with_optimizer {
        install_optimizer_state(&mut *trainer.optimizer, file.path(), state)?;
        outcome.optimizer_restored = true;
    }
    let mut optimizer_step = None;
    if import {
        let params = import::parameters_in_order(&trainer.vs);
        let (slots, steps) = kind.slots();
        let keeps = Keeps { name: &format!("{kind:?}"), slots, steps };
        let imported = import::import_pytorch_optimizer(file, &params, keeps, trainer.device).and_then(|got| {
            got.map(|(imported, state)| {
                install_optimizer_state(&mut *trainer.optimizer, file.path(), state).map(|()| imported)
            })
            .transpose()
        });
        match imported {
            Ok(Some(imported)) => {
                tracing::info!(
                    parameters = imported.parameters,
                    tensors = imported.tensors,
                    "imported the PyTorch optimizer state (matched by parameter order; hyper-parameters are the configured ones)"
                );
                outcome.optimizer_tensors = imported.tensors;
                optimizer_step = imported.step;
            }
            Ok(None) => tracing::info!("the optimizer starts fresh: the file holds no optimizer state"),
            Err(e) if is_out_of_memory(&e) => return Err(e),
            Err(e) => {
                trainer.optimizer.reset_state();
                tracing::warn!("the optimizer starts fresh: cannot import the file's optimizer state: {e}");
            }
        }
    }
    let mut meta = meta;
    if file.meta().is_none() {
        let (step, from) = imported_step(&meta, optimizer_step, trainer.batches_per_epoch());
        meta.position.step = step;
        tracing::info!(step, "the schedule continues at global step {step}, from {from}");
    }
    trainer.restore(&Standing::of(&meta));
    tracing::info!(
        path = %file.path().display(),
        epoch = meta.epoch(),
        step = meta.step(),
        strategy = strategy.name(),
        weights = outcome.weights,
        optimizer_tensors = outcome.optimizer_tensors,
        seconds = format_args!("{:.3}", start.elapsed().as_secs_f64()),
        "resumed"
    );
    Ok(())
}

/// The global step a run continues at from a file `train` did not write, and where that
/// figure comes from: the optimizer state's `step` (Adam's count of the steps it took), the
/// file's own `step`, or its epoch times this run's batches per epoch. Starting at 0 would
/// warm the schedule up again in the middle of the run while Adam's own step goes on.
fn imported_step(meta: &Meta, optimizer_step: Option<u64>, batches_per_epoch: u64) -> (u64, &'static str) {
    match (optimizer_step, meta.step(), meta.epoch()) {
        (Some(step), _, _) => (step, "the optimizer state's `step`"),
        (None, step, _) if step > 0 => (step, "the file's `step`"),
        (None, _, epoch) if epoch > 0 => {
            (u64::from(epoch) * batches_per_epoch, "the file's `epoch` times this run's batches per epoch")
        }
        _ => (0, "nothing: the file records no step or epoch"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 17, item 3): `--resume old.pth` restarted the global step at 0.
    #[test]
    fn an_imported_run_continues_at_the_step_its_file_records() {
        let mut m = Meta::sample("adamw", false);
        m.position.step = 0;
        m.position.epoch = 3;
        assert_eq!(imported_step(&m, Some(57), 20).0, 57, "Adam's step first");
        assert_eq!(imported_step(&m, None, 20), (60, "the file's `epoch` times this run's batches per epoch"));
        m.position.step = 41;
        assert_eq!(imported_step(&m, None, 20).0, 41);
        m.position = Default::default();
        assert_eq!(imported_step(&m, None, 20).0, 0);
    }

    #[test]
    fn a_mid_epoch_checkpoint_needs_the_batch_size_it_was_saved_with() {
        let mut m = Meta::sample("adamw", true);
        assert!(check_position(&m, 64, 10).is_ok(), "an epoch boundary resumes with any batch size");
        m.position.batches_into_epoch = 5;
        assert!(check_position(&m, 32, 10).is_ok());
        let why = check_position(&m, 64, 10).unwrap_err().to_string();
        assert!(why.contains("training.batch_size=32"), "{why}");
    }

    #[test]
    fn a_position_past_the_end_of_the_epoch_is_refused() {
        let mut m = Meta::sample("adamw", true);
        m.batch_size = None;
        m.position.batches_into_epoch = 10;
        assert!(check_position(&m, 32, 4).unwrap_err().to_string().contains("4 batches"));
        assert!(check_position(&m, 32, 10).is_ok());
    }
}

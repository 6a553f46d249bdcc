//! One training run, start to finish, in phases:
//!
//! 1. signal handlers ([`signals`]), device, the data-parallel job joined if the launcher
//!    started one ([`ranks`]), then the run folder locked ([`folder`]) by rank 0;
//! 2. under the lock, where to start from ([`resume::plan`]); a refusal leaves the disk as it
//!    was found;
//! 3. data, model, and the resume itself ([`resume`]);
//! 4. the epochs ([`train_loop`]), whose saves and stops follow [`policy`];
//! 5. the last save waited for.
//!
//! [`measure`] serves `train plan`: model sizes and a measured load, without training.

pub mod evaluate;
pub mod folder;
pub mod measure;
pub mod policy;
pub mod ranks;
pub mod resume;
pub mod signals;
pub mod train_loop;

use std::path::PathBuf;
use std::rc::Rc;

use sha2::{Digest, Sha256};

pub use folder::{output_dir, RunFolder, CONFIG_FILE, DEFAULT_RUN_NAME, METRICS_FILE};
pub use resume::ResumePlan;

use crate::checkpoint::plan::retention::Policy;
use crate::checkpoint::plan::save::SavePolicy;
use crate::checkpoint::saver::Saver;
use crate::checkpoint::CheckpointError;
use crate::config::{Config, ConfigError, Resolved};
use crate::data::{DataError, Dataset};
use crate::device;
use crate::distributed::{Dist, DistError};
use crate::metrics::EpochMetrics;
use crate::training::Trainer;

/// Why a run did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data set could not be loaded.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A checkpoint could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The model cannot be built for the data.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// The requested device does not exist.
    #[error("{0}")]
    Device(String),
    /// `--resume never` over a folder that holds an earlier run's checkpoints.
    #[error(
        "{dir} already holds checkpoints of an earlier run; use --resume auto to continue it, or another --output-dir"
    )]
    ExistingRun {
        /// The checkpoint folder.
        dir: PathBuf,
    },
    /// Out of device memory with no cheaper way left to load or train.
    #[error("{detail}: {}", OOM_ADVICE)]
    OutOfMemory {
        /// What ran out and where.
        detail: String,
    },
    /// `run.output_dir` names something that is not a folder.
    #[error("run.output_dir {path} exists and is not a folder; choose another --output-dir")]
    NotAFolder {
        /// The path.
        path: PathBuf,
    },
    /// The checkpoint `run.resume` names cannot be opened.
    #[error("run.resume: {0}")]
    ResumeFrom(CheckpointError),
    /// `model.init_from` names a file that cannot initialise the model.
    #[error("model.init_from: {0}")]
    InitFrom(CheckpointError),
    /// A checkpoint's position does not fit this run's epochs.
    #[error("cannot resume from {path}: {why}")]
    Position {
        /// The checkpoint.
        path: PathBuf,
        /// Why, and what to do.
        why: String,
    },
    /// A step's loss was NaN or infinite and `training.on_nonfinite` is `stop`.
    #[error(
        "the loss diverged at step {step} (loss {loss}): stopped, `latest` holds the last finite state. Try a lower \
         training.optimizer.lr, training.clip_grad_norm, or training.on_nonfinite: skip_step"
    )]
    NonFinite {
        /// The optimiser step that diverged (1-based).
        step: u64,
        /// Its loss.
        loss: f64,
    },
    /// Weights loaded from a file (`--resume`, `--init-from`) hold NaN or infinite values.
    #[error(
        "{path}: tensor `{tensor}` holds {what} values, which no training can start from (a checkpoint of a diverged \
         run?); resume from an earlier checkpoint (--resume PATH) or start afresh"
    )]
    NonFiniteWeights {
        /// The file loaded.
        path: PathBuf,
        /// The first tensor (by name) that is not finite.
        tensor: String,
        /// `NaN` or `infinite`.
        what: &'static str,
    },
    /// libtorch raised an error in a training step or an evaluation (the model failed on
    /// this batch): the run cannot go on, and nothing is saved from the state it left.
    #[error("{during}: {message}")]
    Libtorch {
        /// Where: `training step 12`, `evaluation after epoch 2`.
        during: String,
        /// libtorch's message, on one line.
        message: String,
    },
    /// Another process holds the run folder.
    #[error("{dir} is in use by another train process; wait for it or choose another --output-dir")]
    Busy {
        /// The run folder.
        dir: PathBuf,
    },
    /// Between the ranks of a data-parallel job.
    #[error(transparent)]
    Distributed(#[from] crate::distributed::DistError),
    /// Writing the run folder failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl RunError {
    /// Whether the user's input is at fault (exit code 2) rather than the run (exit code 1).
    pub fn is_usage(&self) -> bool {
        match self {
            Self::Data(e) => e.is_usage(),
            Self::Model(e) => e.is_usage(),
            // An explicit --resume or --init-from file that is missing or does not fit the
            // model (an `auto` resume only tries the run's own files).
            Self::ResumeFrom(e) | Self::InitFrom(e) | Self::Checkpoint(e) => e.is_usage(),
            Self::Distributed(e) => e.is_usage(),
            _ => matches!(
                self,
                Self::Config(_)
                    | Self::Device(_)
                    | Self::ExistingRun { .. }
                    | Self::Busy { .. }
                    | Self::NotAFolder { .. }
                    | Self::Position { .. }
                    | Self::NonFiniteWeights { .. }
            ),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run folder.
    pub output_dir: PathBuf,
    /// The checkpoint it resumed from, if any.
    pub resumed_from: Option<PathBuf>,
    /// Epochs trained by this invocation.
    pub epochs_trained: u32,
    /// The metrics of the last epoch trained, if any.
    pub last: Option<EpochMetrics>,
    /// Stopped early by SIGTERM/SIGINT (after saving `latest`, when there was anything to save).
    pub interrupted: bool,
}

impl RunSummary {
    fn stopped_early(output_dir: PathBuf, interrupted: bool) -> Self {
        Self { output_dir, resumed_from: None, epochs_trained: 0, last: None, interrupted }
    }
}

/// SHA-256 of the configuration's JSON form, recorded in checkpoints.
pub fn config_sha256(config: &Config) -> String {
    let json = serde_json::to_vec(config).expect("the config schema serializes to JSON");
    Sha256::digest(json).iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs training as configured. With `dry_run`, checks and reports the plan and writes nothing.
pub fn execute(resolved: &Resolved, dry_run: bool) -> Result<RunSummary, RunError> {
    // First, so a stop during start-up is a clean stop too.
    let mut stop = signals::StopFlag::install()
        .map_err(|source| RunError::Io { path: PathBuf::from("<signal handlers>"), source })?;
    crate::fault::quiet_oom_panics();
    let user_cfg = &resolved.config;
    let launch = crate::distributed::env::detect_from_env().map_err(DistError::from)?;
    let planned = ranks::planned(user_cfg, launch.as_ref().map_or(1, |l| l.world));
    let cfg = &*planned;
    let out = output_dir(resolved);
    if let Some(n) = cfg.run.threads {
        tch::set_num_threads(n as i32);
    }
    let device = device::select(cfg.run.device).map_err(|e| RunError::Device(e.to_string()))?;
    let device = ranks::device_for(device, cfg.run.device, launch.as_ref())?;
    if cfg.training.precision == crate::config::Precision::Bf16 {
        if !device.is_cuda() {
            return Err(RunError::Device(format!(
                "training.precision bf16 uses CUDA autocast, but the run is on {}; use fp32 on the CPU",
                device::name(device)
            )));
        }
        crate::memory::cuda::autocast_bf16();
    }
    crate::data::check_files(&cfg.data)?;
    if dry_run {
        let folder = RunFolder::acquire_existing(&out)?;
        let ckpt_dir = out.join(crate::checkpoint::store::DIR_NAME);
        let plan = resume::plan(cfg, &ckpt_dir)?;
        drop(folder);
        tracing::info!(
            output_dir = %out.display(),
            device = device::name(device),
            resume = ?plan,
            launch = ?launch,
            "dry run: configuration, data files and resume plan check out; nothing written"
        );
        return Ok(RunSummary::stopped_early(out, false));
    }
    let dist = launch.map(|l| Dist::connect(l, &cfg.distributed, device)).transpose()?.map(Rc::new);
    if let Some(d) = &dist {
        ranks::check_same_config(d, user_cfg)?;
    }
    if let Some(d) = dist.as_ref().filter(|d| !d.is_leader()) {
        return ranks::follow(cfg, user_cfg, d, device, &mut stop, &out);
    }

    // The lock comes before any look inside the folder: fresh or resume is decided under it.
    let folder = match RunFolder::acquire(&out) {
        Ok(f) => f,
        Err(e) => {
            ranks::announce(dist.as_deref(), &ranks::LeaderStart::Failed(e.to_string()))?;
            return Err(e);
        }
    };
    let started = match start(cfg, &folder, device, &stop) {
        Ok(Some(started)) => started,
        // Until training starts nothing is written: a refused or stopped start leaves the
        // disk as it found it.
        Ok(None) => {
            folder.release_unused();
            ranks::announce(dist.as_deref(), &ranks::LeaderStart::Stopped)?;
            return Ok(RunSummary::stopped_early(out, true));
        }
        Err(e) => {
            folder.release_unused();
            ranks::announce(dist.as_deref(), &ranks::LeaderStart::Failed(e.to_string()))?;
            return Err(e);
        }
    };
    let Started { data, mut trainer, resumed_from } = started;
    if let Some(d) = &dist {
        let start = resumed_from.clone().map_or(ranks::LeaderStart::Fresh, ranks::LeaderStart::From);
        ranks::announce(Some(d), &start)?;
        ranks::join(d, &mut trainer, cfg)?;
    }
    stop.begin_training();
    let log = folder.prepare(user_cfg, trainer.position.step)?;
    if let Some(d) = &dist {
        let detail = format!(
            "rank 0 of {} ({}); training.batch_size {} per rank, global batch {}",
            d.world(),
            d.launch.source,
            user_cfg.training.batch_size,
            cfg.training.batch_size
        );
        tracing::info!("data parallel: {detail}");
        log.append(&crate::metrics::MetricsLine::Event(crate::metrics::EventMetrics {
            step: trainer.position.step,
            event: "data_parallel".into(),
            grad_accum_steps: trainer.grad_accum_steps as u32,
            micro_batch: user_cfg.training.batch_size.div_ceil(user_cfg.training.grad_accum_steps),
            detail,
        }))
        .map_err(|source| RunError::Io { path: log.path().to_path_buf(), source })?;
    }
    if trainer.position.epoch >= cfg.training.epochs {
        tracing::info!(
            epoch = trainer.position.epoch,
            epochs = cfg.training.epochs,
            "run already complete; raise training.epochs to train further"
        );
    }
    let policy = Policy {
        keep_last: cfg.checkpoint.keep_last,
        keep_best: cfg.checkpoint.keep_best,
        best_by: cfg.training.early_stopping.as_ref().map_or(Default::default(), |e| e.metric),
    };
    let sha = config_sha256(user_cfg);
    let mut saver = Saver::new(
        folder.checkpoints(),
        policy,
        SavePolicy::of(&cfg.memory),
        sha.clone(),
        0,
        cfg.checkpoint.async_save,
    );
    let first_epoch = trainer.position.epoch;
    let trained = train_loop::Loop {
        cfg,
        data: &data,
        saver: Some(&mut saver),
        log: Some(&log),
        dist: dist.as_deref(),
        stop: &stop,
        config_sha256: &sha,
    }
    .run(&mut trainer);
    let end = match trained.and_then(|end| saver.finish().map(|_| end).map_err(RunError::from)) {
        Ok(end) => end,
        Err(e) => {
            // A failed save (a full disk, say) must not leave metrics claiming epochs that no
            // checkpoint holds: cut them back to what `latest` on disk records.
            folder.truncate_metrics_to_checkpoints(&log);
            folder.release_if_nothing_saved();
            return Err(e);
        }
    };
    if let Some(d) = &dist {
        // The other ranks wait here for the last save.
        d.barrier()?;
    }
    stop.settle();
    Ok(RunSummary {
        output_dir: out,
        resumed_from,
        epochs_trained: trainer.position.epoch - first_epoch,
        last: end.last,
        interrupted: end.interrupted,
    })
}

/// A run ready to train.
struct Started {
    data: Dataset,
    trainer: Trainer,
    resumed_from: Option<PathBuf>,
}

/// Everything between taking the folder and training, writing nothing: where to start
/// from, the data, the model, the resume. `None` when a stop was requested meanwhile.
fn start(
    cfg: &Config,
    folder: &RunFolder,
    device: tch::Device,
    stop: &signals::StopFlag,
) -> Result<Option<Started>, RunError> {
    let plan = resume::plan(cfg, &folder.checkpoints())?;
    let data = Dataset::load(&cfg.data, cfg.model.gpt.context as usize, &cfg.model.torchscript.inputs)?;
    tracing::info!(
        train = data.train.len(),
        val = data.val.len(),
        task = ?data.task,
        from = %crate::data::source_of(&cfg.data).display(),
        "data loaded"
    );
    check_warmup(cfg, data.train.len())?;
    policy::check_stop_metric(cfg.training.early_stopping.as_ref(), data.task)?;
    if let (Some(limit), tch::Device::Cuda(i)) = (cfg.memory.vram_limit, device) {
        crate::memory::cuda::limit_vram(limit.as_u64(), i);
    }
    // Building the model is where a GPU too small for it (or a vram_limit below it) first
    // shows: libtorch's out-of-memory error arrives as a panic from tch.
    let mut trainer = crate::fault::catch_oom(|| Trainer::new(cfg, &data, device))
        .map_err(|msg| RunError::OutOfMemory { detail: format!("building the model: {msg}") })??;
    if stop.raised() {
        tracing::warn!("stop requested during start-up: nothing to save");
        return Ok(None);
    }
    let resumed_from = resume::resume(cfg, &mut trainer, &plan, data.train.len())?;
    Ok(Some(Started { data, trainer, resumed_from }))
}

/// A warm-up longer than the whole run never reaches `training.optimizer.lr`: refused once
/// the data's size gives the run's length (`max_steps` only stops a run early; running
/// again continues, so it does not shorten the schedule).
fn check_warmup(cfg: &Config, train_examples: usize) -> Result<(), RunError> {
    let t = &cfg.training;
    let batches = t.batches_per_epoch(train_examples);
    let total = u64::from(t.epochs) * batches;
    if t.schedule.warmup_steps > total {
        return Err(ConfigError::Invalid {
            key: "training.schedule.warmup_steps".into(),
            message: format!(
                "is {}, longer than the whole run ({total} steps: {} epochs of {} batches): the rate would never \
                 reach training.optimizer.lr",
                t.schedule.warmup_steps, t.epochs, batches
            ),
        }
        .into());
    }
    Ok(())
}

/// The seed guide's advice, for when no cheaper way to load or train is left.
const OOM_ADVICE: &str = "out of memory with no cheaper strategy left. Try, in order: a smaller \
training.batch_size; a larger training.grad_accum_steps (same effective batch, less memory); \
memory.checkpoint_memory_efficient: true; memory.load_optimizer_state: false (the \
ultra_low_memory profile); a smaller model";

//! One training run, start to finish: validate inputs, find where to resume, train, and
//! write the run folder.
//!
//! Everything that can fail on bad input (data files, device, resume checkpoint, an earlier
//! run in the way) is checked before the first byte is written, so a refused run leaves the
//! disk as it found it.
//!
//! ```text
//! <output_dir>/config.yaml     the resolved configuration of the latest start
//! <output_dir>/metrics.jsonl   one line per completed epoch
//! <output_dir>/checkpoints/    see checkpoint::store
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::checkpoint::retention::Policy;
use crate::checkpoint::saver::{SaveRequest, Saver};
use crate::checkpoint::store;
use crate::checkpoint::{self, CheckpointError, CheckpointFile, Strategy};
use crate::config::{Config, ConfigError, Resolved, ResumeSpec};
use crate::data::{DataError, Dataset, Prefetcher};
use crate::device;
use crate::metrics::{self, EpochMetrics, EventMetrics, MetricsLine, MetricsLog, StepMetrics};
use crate::progress::Progress;
use crate::training::{Trainer, RNG_SCHEME};

/// File name of the resolved configuration in a run folder.
pub const CONFIG_FILE: &str = "config.yaml";
/// File name of the metrics log in a run folder.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Run name when no experiment is given.
pub const DEFAULT_RUN_NAME: &str = "default";

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
    /// Another process holds the run folder.
    #[error("{dir} is in use by another train process; wait for it or choose another --output-dir")]
    Busy {
        /// The run folder.
        dir: PathBuf,
    },
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
            _ => matches!(self, Self::Config(_) | Self::Device(_) | Self::ExistingRun { .. } | Self::Busy { .. }),
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
    /// Stopped early by SIGTERM/SIGINT, after saving `latest`.
    pub interrupted: bool,
}

/// The run folder: `run.output_dir`, or `runs/<experiment>`.
pub fn output_dir(resolved: &Resolved) -> PathBuf {
    resolved
        .config
        .run
        .output_dir
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(resolved.experiment.as_deref().unwrap_or(DEFAULT_RUN_NAME)))
}

/// SHA-256 of the configuration's JSON form, recorded in checkpoints.
pub fn config_sha256(config: &Config) -> String {
    let json = serde_json::to_vec(config).expect("the config schema serializes to JSON");
    Sha256::digest(json).iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a run would start from, decided without loading anything but metadata.
#[derive(Debug, Clone, PartialEq)]
pub enum ResumePlan {
    /// From scratch.
    Fresh,
    /// From these checkpoints, best first (auto tries each until one loads).
    From(Vec<PathBuf>),
}

/// Decides where to resume from, per `run.resume`.
pub fn plan_resume(resolved: &Resolved, ckpt_dir: &Path) -> Result<ResumePlan, RunError> {
    match &resolved.config.run.resume {
        ResumeSpec::Never => {
            if store::list(ckpt_dir)?.is_empty() {
                Ok(ResumePlan::Fresh)
            } else {
                Err(RunError::ExistingRun { dir: ckpt_dir.to_path_buf() })
            }
        }
        ResumeSpec::Path(p) => {
            checkpoint::format::read_meta(p)?;
            Ok(ResumePlan::From(vec![p.clone()]))
        }
        ResumeSpec::Auto => {
            let found = store::candidates(ckpt_dir)?;
            for e in &found.unreadable {
                tracing::warn!("skipping unreadable checkpoint: {e}");
            }
            if found.loadable.is_empty() {
                Ok(ResumePlan::Fresh)
            } else {
                Ok(ResumePlan::From(found.loadable.into_iter().map(|(p, _)| p).collect()))
            }
        }
    }
}

/// Runs training as configured. With `dry_run`, checks and reports the plan and writes nothing.
pub fn execute(resolved: &Resolved, dry_run: bool) -> Result<RunSummary, RunError> {
    let cfg = &resolved.config;
    let out = output_dir(resolved);
    let ckpt_dir = out.join(store::DIR_NAME);
    if let Some(n) = cfg.run.threads {
        tch::set_num_threads(n as i32);
    }
    let device = device::select(cfg.run.device).map_err(RunError::Device)?;
    if cfg.training.precision == crate::config::Precision::Bf16 {
        if !device.is_cuda() {
            return Err(RunError::Device(format!(
                "training.precision bf16 uses CUDA autocast, but the run is on {}; use fp32 on the CPU",
                device::name(device)
            )));
        }
        crate::memory::cuda::autocast_bf16();
    }
    // Lock an existing run folder before reading its checkpoints; a new one is locked when created.
    let lock = if out.is_dir() { Some(RunLock::acquire(&out)?) } else { None };
    let plan = plan_resume(resolved, &ckpt_dir)?;
    if dry_run {
        check_data_files(&cfg.data)?;
        tracing::info!(
            output_dir = %out.display(),
            device = device::name(device),
            resume = ?plan,
            "dry run: configuration, data files and resume plan check out; nothing written"
        );
        return Ok(RunSummary {
            output_dir: out,
            resumed_from: None,
            epochs_trained: 0,
            last: None,
            interrupted: false,
        });
    }

    let data = Dataset::load(&cfg.data, cfg.model.gpt.context as usize)?;
    tracing::info!(
        train = data.train.len(),
        val = data.val.len(),
        task = ?data.task,
        dir = %cfg.data.dir.display(),
        "data loaded"
    );
    if let (Some(limit), tch::Device::Cuda(i)) = (cfg.memory.vram_limit, device) {
        limit_vram(limit.as_u64(), i);
    }
    let mut trainer = Trainer::new(cfg, &data, device)?;
    let resumed_from = resume(cfg, &mut trainer, &plan)?;

    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RunError::Io { path, source }
    };
    std::fs::create_dir_all(&out).map_err(io(&out))?;
    let _lock = match lock {
        Some(lock) => lock,
        None => RunLock::acquire(&out)?,
    };
    for dir in [&out, &ckpt_dir] {
        let removed = store::remove_stale_temporaries(dir)?;
        if removed > 0 {
            tracing::warn!(dir = %dir.display(), removed, "removed temporary files left by an interrupted write");
        }
    }
    let config_path = out.join(CONFIG_FILE);
    let yaml = serde_yaml::to_string(cfg).expect("the config schema serializes to YAML");
    metrics::write_atomic(&config_path, yaml.as_bytes()).map_err(io(&config_path))?;
    let log = MetricsLog::new(out.join(METRICS_FILE));
    log.truncate_after(trainer.step).map_err(io(&out.join(METRICS_FILE)))?;

    let total = cfg.training.epochs;
    if trainer.epoch >= total {
        tracing::info!(
            epoch = trainer.epoch,
            epochs = total,
            "run already complete; raise training.epochs to train further"
        );
    }
    let sha = config_sha256(cfg);
    let policy = Policy { keep_last: cfg.checkpoint.keep_last, keep_best: cfg.checkpoint.keep_best };
    let mut saver = Saver::new(ckpt_dir.clone(), policy, cfg.checkpoint.async_save);
    let stop =
        StopFlag::install().map_err(|source| RunError::Io { path: PathBuf::from("<signal handlers>"), source })?;
    let request = |trainer: &Trainer, epoch_file: bool| SaveRequest {
        tensors: trainer.checkpoint_tensors(true),
        meta: trainer.checkpoint_meta(&sha),
        epoch_file,
        epoch_with_optimizer: cfg.memory.save_optimizer_in_epoch_checkpoints,
        compress: cfg.memory.compress_checkpoints,
    };
    quiet_oom_panics();
    let max_steps_reached = |t: &Trainer| cfg.training.max_steps.is_some_and(|m| t.step >= m);
    let mut last = None;
    let first_epoch = trainer.epoch;
    let mut interrupted = false;
    let metrics_path = out.join(METRICS_FILE);
    let run_start = Instant::now();
    'epochs: while trainer.epoch < total {
        let epoch = trainer.epoch + 1;
        let _span = tracing::info_span!("epoch", epoch).entered();
        let batches = trainer.epoch_plan(data.train.len());
        let skip = trainer.batches_into_epoch as usize;
        let mut progress =
            Progress::start(epoch, total, batches.len() as u64, skip as u64, cfg.training.log_every_n_steps);
        let train_start = Instant::now();
        let mut samples = 0;
        let mut lr = cfg.training.optimizer.lr;
        for (xs, ys) in Prefetcher::new(&data.train, batches[skip..].to_vec(), device) {
            let step = loop {
                // A step that runs out of memory has not updated anything yet (the optimizer
                // steps after every micro-batch went through): retry it with half the
                // micro-batch and twice the accumulation, the same effective batch.
                let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| trainer.train_step(&xs, &ys)));
                match attempt {
                    Ok(step) => break step,
                    Err(panic) => {
                        let msg = panic_message(&panic);
                        let n = xs.size()[0];
                        if !crate::fault::is_oom_message(&msg) {
                            std::panic::resume_unwind(panic);
                        }
                        crate::memory::cuda::empty_cache();
                        if !trainer.halve_micro_batch(n) {
                            return Err(RunError::OutOfMemory {
                                detail: format!("training step {}: {msg}", trainer.step + 1),
                            });
                        }
                        let accum = trainer.grad_accum_steps;
                        let micro = (n + accum - 1) / accum;
                        tracing::warn!(
                            step = trainer.step + 1,
                            grad_accum_steps = accum,
                            micro_batch = micro,
                            "out of memory: halving the micro-batch, doubling gradient accumulation"
                        );
                        let event = MetricsLine::Event(EventMetrics {
                            step: trainer.step + 1,
                            event: "oom_recovery".into(),
                            grad_accum_steps: accum as u32,
                            micro_batch: micro as u32,
                            detail: msg,
                        });
                        log.append(&event).map_err(io(&metrics_path))?;
                    }
                }
            };
            samples += step.samples;
            lr = step.lr;
            let rate = progress.step(trainer.step, step.loss, step.lr, step.samples);
            if trainer.step % cfg.training.log_every_n_steps == 0 {
                let device_stats = match device {
                    tch::Device::Cuda(i) => crate::memory::cuda::stats(i),
                    _ => None,
                };
                let line = MetricsLine::Step(StepMetrics {
                    epoch,
                    step: trainer.step,
                    loss: step.loss,
                    lr: step.lr,
                    samples_per_sec: rate,
                    elapsed_seconds: run_start.elapsed().as_secs_f64(),
                    host_rss_bytes: crate::memory::probe::host().rss,
                    device_allocated_bytes: device_stats.map(|s| s.allocated),
                    device_peak_allocated_bytes: device_stats.map(|s| s.peak_allocated),
                });
                log.append(&line).map_err(io(&metrics_path))?;
            }
            let mid_epoch = (trainer.batches_into_epoch as usize) < batches.len();
            if mid_epoch && (stop.raised() || max_steps_reached(&trainer)) {
                // Stopped by a signal or by training.max_steps: save the exact position.
                progress.finish();
                if stop.raised() {
                    tracing::warn!(
                        epoch,
                        batch = trainer.batches_into_epoch,
                        "stop requested: saving `latest` and exiting"
                    );
                    interrupted = true;
                } else {
                    tracing::info!(step = trainer.step, "reached training.max_steps: saving `latest`");
                }
                saver.submit(request(&trainer, false))?;
                break 'epochs;
            }
            if mid_epoch && cfg.checkpoint.every_n_steps.is_some_and(|n| trainer.step % n == 0) {
                saver.submit(request(&trainer, false))?;
            }
        }
        progress.finish();
        let train_seconds = train_start.elapsed().as_secs_f64();
        let train_loss = trainer.finish_epoch(data.train.len());
        let eval_start = Instant::now();
        let eval = trainer.evaluate(&data.val);
        let eval_seconds = eval_start.elapsed().as_secs_f64();
        trainer.last_eval = eval;

        let epoch_file = epoch % cfg.checkpoint.every_n_epochs == 0 || epoch == total;
        let (blocked, _) = saver.submit(request(&trainer, epoch_file))?;

        let m = EpochMetrics {
            epoch,
            step: trainer.step,
            train_loss,
            val_loss: eval.loss,
            val_accuracy: eval.accuracy,
            lr,
            train_seconds,
            samples_per_sec: samples as f64 / train_seconds.max(f64::EPSILON),
            eval_seconds,
            checkpoint_blocked_seconds: blocked,
            host_rss_bytes: crate::memory::probe::host().rss,
        };
        log.append(&MetricsLine::Epoch(m.clone())).map_err(io(&metrics_path))?;
        tracing::info!(
            epoch,
            of = total,
            train_loss = format_args!("{:.4}", m.train_loss),
            val_loss = format_args!("{:.4}", m.val_loss),
            val_accuracy = format_args!("{:.4}", m.val_accuracy),
            samples_per_sec = format_args!("{:.0}", m.samples_per_sec),
            checkpoint_blocked_ms = format_args!("{:.1}", blocked * 1e3),
            "epoch done"
        );
        last = Some(m);
        if stop.raised() {
            tracing::warn!(epoch, "stop requested: exiting after the epoch's checkpoint");
            interrupted = trainer.epoch < total;
            break;
        }
        if max_steps_reached(&trainer) {
            tracing::info!(step = trainer.step, "reached training.max_steps");
            break;
        }
    }
    saver.finish()?;
    Ok(RunSummary { output_dir: out, resumed_from, epochs_trained: trainer.epoch - first_epoch, last, interrupted })
}

/// The sizes a plan needs when there is no checkpoint yet: the configured model built on the
/// CPU, and the state its optimizer will hold (Adam: two moments and a step per parameter;
/// SGD: one momentum buffer, if any). Loads the data set for the model's input shape.
pub fn model_sizes(cfg: &Config) -> Result<crate::memory::strategy::Sizes, RunError> {
    let data = Dataset::load(&cfg.data, cfg.model.gpt.context as usize)?;
    let trainer = Trainer::new(cfg, &data, tch::Device::Cpu)?;
    let vars = trainer.variables();
    let bytes = checkpoint::format::tensor_bytes;
    let model: u64 = vars.values().map(bytes).sum();
    let largest = vars.values().map(bytes).max().unwrap_or(0);
    let o = &cfg.training.optimizer;
    let optimizer = match o.kind {
        crate::config::OptimizerKind::Adam | crate::config::OptimizerKind::Adamw => 2 * model + 8 * vars.len() as u64,
        crate::config::OptimizerKind::Sgd if o.momentum > 0.0 => model,
        crate::config::OptimizerKind::Sgd => 0,
    };
    Ok(crate::memory::strategy::Sizes { model, weights: model, optimizer, largest })
}

/// What loading a checkpoint actually took, measured (`train plan --execute`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MeasuredLoad {
    /// The strategy that succeeded (after any step down).
    pub strategy: Strategy,
    /// Wall time of the load.
    pub seconds: f64,
    /// Peak host RSS during the load above the RSS just before it (model included before).
    pub host_peak_above_start_bytes: Option<u64>,
    /// Peak bytes allocated on the CUDA device during the load (`None` on the CPU).
    pub device_peak_allocated_bytes: Option<u64>,
    /// Bytes allocated on the CUDA device before the load (the model).
    pub device_allocated_before_bytes: Option<u64>,
}

/// Builds the configured model on the configured device and loads `path` into it as a run
/// would (plan, strategy, step-down), measuring time and peak memory. Writes nothing.
pub fn measure_load(cfg: &Config, path: &Path) -> Result<MeasuredLoad, RunError> {
    let device = device::select(cfg.run.device).map_err(RunError::Device)?;
    let data = Dataset::load(&cfg.data, cfg.model.gpt.context as usize)?;
    let sizes = crate::memory::plan::sizes_of(path, 0)?;
    let mut trainer = Trainer::new(cfg, &data, device)?;
    drop(data);
    let cuda = match device {
        tch::Device::Cuda(i) => Some(i),
        _ => None,
    };
    let before = cuda.and_then(crate::memory::cuda::stats).map(|s| s.allocated);
    if let Some(i) = cuda {
        crate::memory::cuda::reset_peak(i);
    }
    crate::memory::probe::reset_peak_rss();
    let rss_before = crate::memory::probe::host().rss;
    let start = Instant::now();
    let strategy = load_planned(cfg, &mut trainer, path, sizes)?;
    let seconds = start.elapsed().as_secs_f64();
    let host = crate::memory::probe::host();
    Ok(MeasuredLoad {
        strategy,
        seconds,
        host_peak_above_start_bytes: host.peak_rss.zip(rss_before).map(|(p, b)| p.saturating_sub(b)),
        device_peak_allocated_bytes: cuda.and_then(crate::memory::cuda::stats).map(|s| s.peak_allocated),
        device_allocated_before_bytes: before,
    })
}

/// Checks that the configured data files exist, without reading them (for `--dry-run`).
fn check_data_files(cfg: &crate::config::DataConfig) -> Result<(), DataError> {
    let files: Vec<(PathBuf, PathBuf)> = match (cfg.kind, &cfg.path) {
        (crate::config::DataKind::Idx, _) => {
            ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
                .iter()
                .map(|stem| (cfg.dir.join(stem), cfg.dir.join(format!("{stem}.gz"))))
                .collect()
        }
        (_, Some(path)) => vec![(path.clone(), path.clone())],
        (_, None) => Vec::new(),
    };
    for (plain, alt) in files {
        if !plain.is_file() && !alt.is_file() {
            let dir = plain.parent().map(Path::to_path_buf).unwrap_or_default();
            return Err(DataError::Missing { path: alt, dir });
        }
    }
    Ok(())
}

/// Caps libtorch's CUDA caching allocator at `limit` bytes of GPU `index`, through its
/// `per_process_memory_fraction` setting, before the first allocation reads it.
fn limit_vram(limit: u64, index: usize) {
    match crate::memory::probe::GpuProbe::memory(&crate::memory::probe::Nvml, index as u32) {
        Ok(m) if m.total > 0 => {
            let fraction = (limit as f64 / m.total as f64).min(1.0);
            let mut conf = std::env::var("PYTORCH_CUDA_ALLOC_CONF").unwrap_or_default();
            if !conf.is_empty() {
                conf.push(',');
            }
            conf.push_str(&format!("per_process_memory_fraction:{fraction:.6}"));
            // Set before any CUDA allocation, while no other thread reads the environment.
            std::env::set_var("PYTORCH_CUDA_ALLOC_CONF", &conf);
            tracing::info!(limit, total = m.total, fraction, "memory.vram_limit: capping the CUDA caching allocator");
        }
        Ok(_) | Err(_) => tracing::warn!("memory.vram_limit is set but the GPU's size is unknown: not applied"),
    }
}

/// The message of a caught panic (libtorch errors arrive as panics from tch's infallible calls).
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Keeps out-of-memory panics, which the loop recovers from, out of stderr; any other panic
/// is printed as usual.
fn quiet_oom_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if !crate::fault::is_oom_message(msg) {
            previous(info);
        }
    }));
}

/// An exclusive lock on a run folder (flock on the folder itself, so no lock file is left
/// behind), held for the whole run: two processes never write one run's checkpoints.
struct RunLock {
    _held: std::fs::File,
}

impl RunLock {
    fn acquire(dir: &Path) -> Result<Self, RunError> {
        let io = |source| RunError::Io { path: dir.to_path_buf(), source };
        let file = std::fs::File::open(dir).map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _held: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(RunError::Busy { dir: dir.to_path_buf() }),
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }
}

/// Set by SIGTERM or SIGINT: the loop finishes its step, saves `latest` and exits with
/// [`crate::app::EXIT_INTERRUPTED`]. A second signal while the first is pending ends the
/// process at once (exit status 130).
struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    fn install() -> std::io::Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        for signal in [SIGTERM, SIGINT] {
            // Registered first, so it sees the flag as it was before this signal set it.
            signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&flag))?;
            signal_hook::flag::register(signal, Arc::clone(&flag))?;
        }
        Ok(Self(flag))
    }

    fn raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The seed guide's advice, for when no cheaper way to load or train is left.
const OOM_ADVICE: &str = "out of memory with no cheaper strategy left. Try, in order: a smaller \
training.batch_size; a larger training.grad_accum_steps (same effective batch, less memory); \
memory.checkpoint_memory_efficient: true; memory.load_optimizer_state: false (the \
ultra_low_memory profile); a smaller model";

/// Loads the first checkpoint of `plan` that loads. With `auto` a checkpoint that fails is
/// reported and the next one tried; an explicit path must load. The loading strategy is
/// chosen per checkpoint from free memory (see [`crate::memory::plan`]); an out-of-memory
/// error steps down to the next cheaper strategy.
fn resume(cfg: &Config, trainer: &mut Trainer, plan: &ResumePlan) -> Result<Option<PathBuf>, RunError> {
    let ResumePlan::From(paths) = plan else {
        tracing::info!("starting fresh");
        return Ok(None);
    };
    let explicit = matches!(cfg.run.resume, ResumeSpec::Path(_));
    let mut last_error = None;
    for path in paths {
        let result = crate::memory::plan::sizes_of(path, 0)
            .map_err(RunError::from)
            .and_then(|sizes| load_planned(cfg, trainer, path, sizes).map(|_| ()));
        match result {
            Ok(()) => return Ok(Some(path.clone())),
            Err(e) if !explicit && !matches!(e, RunError::OutOfMemory { .. }) => {
                tracing::warn!("cannot resume from {}: {e}; trying an older checkpoint", path.display());
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    // Every candidate failed: starting over would overwrite them, so stop and say why.
    Err(last_error.expect("plan has at least one path"))
}

/// Chooses a strategy for `path` and loads with it, stepping down on out-of-memory errors.
fn load_planned(
    cfg: &Config,
    trainer: &mut Trainer,
    path: &Path,
    sizes: crate::memory::strategy::Sizes,
) -> Result<Strategy, RunError> {
    // The model is already on the device, so the free figure excludes it: plan with model 0.
    let plan = crate::memory::plan::make(&cfg.memory, trainer.device, sizes, &crate::memory::probe::Nvml)
        .map_err(|message| ConfigError::Invalid { key: "memory.strategy".into(), message })?;
    tracing::info!(
        strategy = plan.strategy.name(),
        source = %plan.source,
        free_bytes = ?plan.free_vram_bytes,
        reason = %plan.reason,
        "loading plan"
    );
    let mut strategy = plan.strategy;
    loop {
        match load_one(cfg, trainer, path, strategy) {
            Err(e) if checkpoint::load::is_out_of_memory(&e) => {
                crate::memory::cuda::empty_cache();
                match strategy.cheaper() {
                    Some(next) => {
                        tracing::warn!(
                            "out of memory loading {} with {}; stepping down to {}",
                            path.display(),
                            strategy.name(),
                            next.name()
                        );
                        strategy = next;
                    }
                    None => return Err(RunError::OutOfMemory { detail: format!("loading {}: {e}", path.display()) }),
                }
            }
            other => {
                // Return what staging left cached in the allocator (torch.cuda.empty_cache()).
                crate::memory::cuda::empty_cache();
                return other.map(|()| strategy).map_err(RunError::from);
            }
        }
    }
}

fn load_one(cfg: &Config, trainer: &mut Trainer, path: &Path, strategy: Strategy) -> Result<(), CheckpointError> {
    let start = Instant::now();
    let file = CheckpointFile::open(path)?;
    let meta = file.meta().clone();
    let saved_kind = meta.optimizer.get("kind").and_then(|k| k.as_str()).map(str::to_string);
    let our_kind = serde_json::to_value(cfg.training.optimizer.kind).ok().and_then(|k| k.as_str().map(str::to_string));
    let want_optimizer = if !strategy.loads_optimizer() {
        tracing::info!(
            "loading with model_only{}: the optimizer starts fresh (momentum and moment estimates reset)",
            if cfg.memory.load_optimizer_state { "" } else { " (memory.load_optimizer_state is false)" }
        );
        false
    } else if !meta.has_optimizer_state {
        tracing::warn!("{} holds no optimizer state: the optimizer starts fresh", path.display());
        false
    } else if saved_kind != our_kind {
        tracing::warn!(saved = ?saved_kind, configured = ?our_kind, "optimizer kind changed: the optimizer starts fresh");
        false
    } else {
        true
    };
    if meta.rng.scheme != RNG_SCHEME || meta.rng.seed != cfg.training.seed {
        tracing::warn!(
            saved_seed = meta.rng.seed,
            "checkpoint was made with another seed or RNG scheme: the continuation will not match an uninterrupted run"
        );
    }
    trainer.optimizer.reset_state();
    let vars = trainer.variables();
    let optimizer = if want_optimizer { Some(&mut *trainer.optimizer) } else { None };
    let outcome = checkpoint::load_into(&file, &vars, optimizer, trainer.device, strategy, true)?;
    trainer.restore_position(&meta);
    tracing::info!(
        path = %path.display(),
        epoch = meta.epoch,
        step = meta.step,
        strategy = strategy.name(),
        weights = outcome.weights,
        optimizer_tensors = outcome.optimizer_tensors,
        seconds = format_args!("{:.3}", start.elapsed().as_secs_f64()),
        "resumed"
    );
    Ok(())
}

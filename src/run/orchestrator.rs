//! [`execute`]: one run, start to finish, as a short list of phases. Rank 0 of a
//! data-parallel job (or the single process: the leader) and the other ranks (followers)
//! go through the same phases; they differ in where they learn the start from (the leader
//! decides it under the run folder's lock, the followers wait for its word) and in that
//! the leader alone writes (the folder, the metrics, the checkpoints).

use std::path::PathBuf;
use std::rc::Rc;

use super::error::RunError;
use super::folder::{output_dir, RunFolder};
use super::job::{PlannedConfig, UserConfig};
use super::policy;
use super::ranks::{self, LeaderStart};
use super::resume::{self, ResumePlan};
use super::setup::data_and_trainer;
use super::signals::StopFlag;
use super::summary::RunSummary;
use super::train_loop::{Loop, LoopEnd};
use crate::checkpoint::plan::retention::Policy;
use crate::checkpoint::plan::save::SavePolicy;
use crate::checkpoint::saver::Saver;
use crate::checkpoint::CheckpointFile;
use crate::config::{ConfigError, Precision, Resolved};
use crate::data::Dataset;
use crate::device;
use crate::distributed::{Dist, DistError, Launch};
use crate::metrics::{EventMetrics, MetricsLine, MetricsLog};
use crate::training::Trainer;

/// The run this process takes part in, before it starts.
struct Job {
    /// As the user resolved it.
    user: UserConfig,
    /// As planned for the job's world (the global batch).
    planned: PlannedConfig,
    /// The data-parallel job the launcher started, if any.
    launch: Option<Launch>,
    /// The run folder.
    out: PathBuf,
}

/// Runs training as configured. With `dry_run`, checks and reports the plan and writes nothing.
pub fn execute(resolved: &Resolved, dry_run: bool) -> Result<RunSummary, RunError> {
    // First, so a stop during start-up is a clean stop too.
    let mut stop =
        StopFlag::install().map_err(|source| RunError::Io { path: PathBuf::from("<signal handlers>"), source })?;
    crate::fault::quiet_oom_panics();
    let job = Job::new(resolved)?;
    let device = job.device()?;
    crate::data::check_files(&job.planned.data)?;
    if dry_run {
        return check_only(&job, device);
    }
    let dist = job.connect(device)?;
    let Some(prepared) = prepare(&job, dist.as_ref(), device, &stop)? else {
        return Ok(RunSummary::stopped_early(job.out, true));
    };
    train(&job, prepared, dist.as_ref(), &mut stop)
}

impl Job {
    fn new(resolved: &Resolved) -> Result<Self, RunError> {
        let launch = crate::distributed::env::detect_from_env().map_err(DistError::from)?;
        let user = UserConfig::new(resolved.config.clone());
        let planned = user.plan(launch.as_ref().map_or(1, |l| l.world));
        Ok(Self { user, planned, launch, out: output_dir(resolved) })
    }

    /// The device this process trains on (with `run.threads` and bf16 autocast set up).
    fn device(&self) -> Result<tch::Device, RunError> {
        let cfg = &self.planned;
        if let Some(n) = cfg.run.threads {
            tch::set_num_threads(n as i32);
        }
        let device = device::select(cfg.run.device).map_err(|e| RunError::Device(e.to_string()))?;
        let device = ranks::device_for(device, cfg.run.device, self.launch.as_ref())?;
        if cfg.training.precision == Precision::Bf16 {
            if !device.is_cuda() {
                return Err(RunError::Device(format!(
                    "training.precision bf16 uses CUDA autocast, but the run is on {}; use fp32 on the CPU",
                    device::name(device)
                )));
            }
            crate::memory::cuda::autocast_bf16();
        }
        Ok(device)
    }

    /// Joins the data-parallel job, if the launcher started one, and checks that every rank
    /// was started with the same settings.
    fn connect(&self, device: tch::Device) -> Result<Option<Rc<Dist>>, RunError> {
        let dist =
            self.launch.clone().map(|l| Dist::connect(l, &self.planned.distributed, device)).transpose()?.map(Rc::new);
        if let Some(d) = &dist {
            ranks::check_same_config(d, &self.user)?;
        }
        Ok(dist)
    }
}

/// `--dry-run`: where the run would start from, under the folder's lock if the folder
/// exists; nothing written.
fn check_only(job: &Job, device: tch::Device) -> Result<RunSummary, RunError> {
    let folder = RunFolder::acquire_existing(&job.out)?;
    let ckpt_dir = job.out.join(crate::checkpoint::store::DIR_NAME);
    let plan = resume::plan(&job.planned, &ckpt_dir)?;
    drop(folder);
    tracing::info!(
        output_dir = %job.out.display(),
        device = device::name(device),
        resume = ?plan,
        launch = ?job.launch,
        "dry run: configuration, data files and resume plan check out; nothing written"
    );
    Ok(RunSummary::stopped_early(job.out.clone(), false))
}

/// A run ready to train: this process's part of it.
struct Prepared {
    data: Dataset,
    trainer: Trainer,
    resumed_from: Option<PathBuf>,
    /// The run folder, held by the leader; `None` on the other ranks, which write nothing.
    folder: Option<RunFolder>,
}

/// Everything before training, writing nothing: where to start from, the data, the model,
/// the resume. `None` when a stop was requested meanwhile.
fn prepare(
    job: &Job,
    dist: Option<&Rc<Dist>>,
    device: tch::Device,
    stop: &StopFlag,
) -> Result<Option<Prepared>, RunError> {
    match dist.filter(|d| !d.is_leader()) {
        Some(d) => follow(job, d, device),
        None => lead(job, dist.map(Rc::as_ref), device, stop),
    }
}

/// The leader's start: the folder locked, where to start from decided under the lock, the
/// rest loaded, and the other ranks told how it went.
fn lead(job: &Job, dist: Option<&Dist>, device: tch::Device, stop: &StopFlag) -> Result<Option<Prepared>, RunError> {
    // The lock comes before any look inside the folder: fresh or resume is decided under it.
    let folder = match RunFolder::acquire(&job.out) {
        Ok(f) => f,
        Err(e) => {
            ranks::announce(dist, &LeaderStart::Failed(e.to_string()))?;
            return Err(e);
        }
    };
    let started =
        resume::plan(&job.planned, &folder.checkpoints()).and_then(|plan| load(job, &plan, dist, device, Some(stop)));
    match started {
        Ok(Some((data, trainer, resumed_from))) => {
            let start = resumed_from.clone().map_or(LeaderStart::Fresh, LeaderStart::From);
            ranks::announce(dist, &start)?;
            Ok(Some(Prepared { data, trainer, resumed_from, folder: Some(folder) }))
        }
        // Until training starts nothing is written: a refused or stopped start leaves the
        // disk as it found it.
        Ok(None) => {
            folder.release_unused();
            ranks::announce(dist, &LeaderStart::Stopped)?;
            Ok(None)
        }
        Err(e) => {
            folder.release_unused();
            ranks::announce(dist, &LeaderStart::Failed(e.to_string()))?;
            Err(e)
        }
    }
}

/// A follower's start: waits for the leader's word and loads the same checkpoint.
fn follow(job: &Job, dist: &Dist, device: tch::Device) -> Result<Option<Prepared>, RunError> {
    let plan = match ranks::await_leader(dist)? {
        LeaderStart::Fresh => ResumePlan::Fresh,
        LeaderStart::From(p) => {
            ResumePlan::From(vec![CheckpointFile::open(&p).map_err(|e| RunError::ResumeFrom(e.into()))?])
        }
        LeaderStart::Stopped => return Ok(None),
        LeaderStart::Failed(m) => return Err(DistError::LeaderFailed(m).into()),
    };
    let Some((data, trainer, resumed_from)) = load(job, &plan, Some(dist), device, None)? else { return Ok(None) };
    Ok(Some(Prepared { data, trainer, resumed_from, folder: None }))
}

/// The data, the model and the resume from `plan`. `None` when `stop` (the leader's: the
/// others follow its word) was raised meanwhile.
fn load(
    job: &Job,
    plan: &ResumePlan,
    dist: Option<&Dist>,
    device: tch::Device,
    stop: Option<&StopFlag>,
) -> Result<Option<(Dataset, Trainer, Option<PathBuf>)>, RunError> {
    let cfg = &job.planned;
    let (data, mut trainer) = data_and_trainer(cfg, device, |data| {
        check_warmup(cfg, data.train.len())?;
        Ok(policy::check_stop_metric(cfg.training.early_stopping.as_ref(), data.task)?)
    })?;
    if stop.is_some_and(StopFlag::raised) {
        tracing::warn!("stop requested during start-up: nothing to save");
        return Ok(None);
    }
    if let Some(d) = dist {
        // Before the resume, which reads only this rank's pieces of sharded state.
        ranks::shard(d, &mut trainer, cfg)?;
    }
    let resumed_from = resume::resume(cfg, &mut trainer, plan, data.train.len())?;
    Ok(Some((data, trainer, resumed_from)))
}

/// The epochs, on every rank: the trainer joined to the job, the loop run (the leader
/// writing, see [`Writer`]), the last save waited for.
fn train(job: &Job, prepared: Prepared, dist: Option<&Rc<Dist>>, stop: &mut StopFlag) -> Result<RunSummary, RunError> {
    let Prepared { data, mut trainer, resumed_from, folder } = prepared;
    if let Some(d) = dist {
        ranks::check_same_data(d, data.train.len(), data.val.len())?;
        ranks::join(d, &mut trainer, &job.planned)?;
    }
    // With sharded state every rank writes its shard of each checkpoint, into rank 0's
    // folder (where its index names them), whatever `run.output_dir` this rank was given.
    let shard_dir = match (dist, trainer.shard_stage()) {
        (Some(d), Some(_)) => {
            let leader = folder.as_ref().map(|f| {
                let dir = f.checkpoints();
                let absolute = dir.parent().and_then(|p| std::fs::canonicalize(p).ok());
                absolute.map_or(dir, |p| p.join(crate::checkpoint::store::DIR_NAME)).display().to_string()
            });
            Some(PathBuf::from(d.share("run/checkpoint-dir", leader.as_deref())?))
        }
        _ => None,
    };
    stop.begin_training();
    let mut writer = folder.map(|f| Writer::open(job, f, &trainer, dist)).transpose()?;
    let mut shard_saver = match (dist, &writer, shard_dir) {
        (Some(d), None, Some(dir)) => Some(saver_for(job, &trainer, Some(d), dir)),
        _ => None,
    };
    let cfg = &job.planned;
    if trainer.position.epoch >= cfg.training.epochs {
        tracing::info!(
            epoch = trainer.position.epoch,
            epochs = cfg.training.epochs,
            "run already complete; raise training.epochs to train further"
        );
    }
    let first_epoch = trainer.position.epoch;
    let (saver, log) = match writer.as_mut() {
        Some(w) => (Some(&mut w.saver), Some(&w.log)),
        None => (shard_saver.as_mut(), None),
    };
    let trained = Loop { cfg, data: &data, saver, log, dist: dist.map(Rc::as_ref), stop }.run(&mut trainer);
    // The folder stays locked until every rank is done.
    let (end, _folder) = match writer {
        Some(w) => w.finish(trained).map(|(end, folder)| (end, Some(folder)))?,
        None => (trained?, None),
    };
    if let Some(d) = dist {
        // The other ranks wait here for the leader's last save.
        d.barrier()?;
    }
    stop.settle();
    Ok(RunSummary {
        output_dir: job.out.clone(),
        resumed_from,
        epochs_trained: trainer.position.epoch - first_epoch,
        last: end.last,
        interrupted: end.interrupted,
    })
}

/// What the leader writes while training: the folder it holds, the metrics log, the saver.
struct Writer {
    folder: RunFolder,
    log: MetricsLog,
    saver: Saver,
}

impl Writer {
    /// Readies the folder for training from the trainer's position and records the
    /// data-parallel job, if any.
    fn open(job: &Job, folder: RunFolder, trainer: &Trainer, dist: Option<&Rc<Dist>>) -> Result<Self, RunError> {
        let (user, cfg) = (&job.user, &job.planned);
        let log = folder.prepare(user, trainer.position.step)?;
        if let Some(d) = dist {
            let detail = format!(
                "rank 0 of {} ({}); training.batch_size {} per rank, global batch {}",
                d.world(),
                d.launch.source,
                user.training.batch_size,
                cfg.training.batch_size
            );
            tracing::info!("data parallel: {detail}");
            log.append(&MetricsLine::Event(EventMetrics {
                step: trainer.position.step,
                event: "data_parallel".into(),
                grad_accum_steps: trainer.grad_accum_steps as u32,
                micro_batch: user.training.batch_size.div_ceil(user.training.grad_accum_steps),
                detail,
            }))
            .map_err(|source| RunError::Io { path: log.path().to_path_buf(), source })?;
        }
        let saver = saver_for(job, trainer, dist, folder.checkpoints());
        Ok(Self { folder, log, saver })
    }

    /// Waits for the last save; gives the folder back, still locked. A failed run or save
    /// (a full disk, say) must not leave metrics claiming epochs that no checkpoint holds:
    /// they are cut back to what `latest` on disk records, and a first start that saved
    /// nothing leaves no folder.
    fn finish(self, trained: Result<LoopEnd, RunError>) -> Result<(LoopEnd, RunFolder), RunError> {
        let Self { folder, log, saver } = self;
        match trained.and_then(|end| saver.finish().map(|_| end).map_err(RunError::from)) {
            Ok(end) => Ok((end, folder)),
            Err(e) => {
                folder.truncate_metrics_to_checkpoints(&log);
                folder.release_if_nothing_saved();
                Err(e)
            }
        }
    }
}

/// The saver of this rank into `dir`: with sharded state, every rank's, synchronous and
/// agreeing through the store; otherwise the leader's, in the background when
/// `checkpoint.async_save`.
fn saver_for(job: &Job, trainer: &Trainer, dist: Option<&Rc<Dist>>, dir: PathBuf) -> Saver {
    let cfg = &job.planned;
    let policy = Policy {
        keep_last: cfg.checkpoint.keep_last,
        keep_best: cfg.checkpoint.keep_best,
        best_by: cfg.training.early_stopping.as_ref().map_or(Default::default(), |e| e.metric),
    };
    let rank = dist.map_or(0, |d| d.rank() as usize);
    let (save, sha) = (SavePolicy::of(&cfg.memory), job.user.sha256());
    match dist.filter(|_| trainer.shard_stage().is_some()) {
        Some(d) => {
            if cfg.checkpoint.async_save && d.is_leader() {
                tracing::info!(
                    "sharded checkpoints are written synchronously (the ranks agree on each before its index)"
                );
            }
            Saver::sharded(dir, policy, save, sha, rank, Rc::new(ranks::StoreExchange(Rc::clone(d))))
        }
        None => Saver::new(dir, policy, save, sha, rank, cfg.checkpoint.async_save),
    }
}

/// A warm-up longer than the whole run never reaches `training.optimizer.lr`: refused once
/// the data's size gives the run's length (`max_steps` only stops a run early; running
/// again continues, so it does not shorten the schedule).
fn check_warmup(cfg: &PlannedConfig, train_examples: usize) -> Result<(), RunError> {
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

//! Saving checkpoints without stalling training.
//!
//! The training thread only takes a *snapshot*: every tensor copied once to host memory
//! (device-to-host on a GPU; a memory copy on the CPU, since training goes on updating the
//! originals in place). A background thread then writes the files, verifies `latest`, and
//! applies retention. At most one save is in flight: a new one first waits for the last,
//! and [`Saver::finish`] waits before the run exits. The time the training thread spent in
//! [`Saver::submit`] (snapshot plus any wait) is reported as `blocked`.
//!
//! A save writes, in order: the epoch checkpoint (when due), then `latest`; `latest` is then
//! re-read and every checksum checked, and only then are old epoch checkpoints rotated away.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use tch::{Device, Tensor};
use train_ckpt::{CheckpointFile, Error as FileError};

use super::error::CheckpointError;
use super::plan::retention::{self, EpochEntry, Policy};
use super::plan::save::{self, SavePlan, SavePolicy, Slot};
use super::state::TrainingState;
use super::store;

/// What a finished save did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SaveReport {
    /// Files written, with their sizes.
    pub written: Vec<(PathBuf, u64)>,
    /// Epoch checkpoints deleted by retention.
    pub deleted: Vec<PathBuf>,
    /// Seconds the writer spent (off the training thread when asynchronous).
    pub write_seconds: f64,
}

type Job = (Vec<(String, Tensor)>, SavePlan);

/// The background writer: jobs in, results out, and its thread.
struct Worker {
    jobs: mpsc::SyncSender<Job>,
    results: mpsc::Receiver<Result<SaveReport, CheckpointError>>,
    thread: JoinHandle<()>,
}

/// Writes checkpoints into one folder, synchronously or on a background thread, as
/// [`save::plan`] says.
pub struct Saver {
    dir: PathBuf,
    retention: Policy,
    policy: SavePolicy,
    config_sha256: String,
    rank: usize,
    worker: Option<Worker>,
    in_flight: bool,
}

impl Saver {
    /// A saver into `dir` for rank `rank` of the job (0 when there is no job), writing files
    /// as `policy` says, rotating them as `retention` does, and recording `config_sha256`;
    /// `background` moves the writing to a thread of its own.
    pub fn new(
        dir: PathBuf,
        retention: Policy,
        policy: SavePolicy,
        config_sha256: String,
        rank: usize,
        background: bool,
    ) -> Self {
        let worker = background.then(|| {
            let (job_tx, job_rx) = mpsc::sync_channel::<Job>(1);
            let (done_tx, done_rx) = mpsc::channel();
            let thread_dir = dir.clone();
            let handle = std::thread::Builder::new()
                .name("checkpoint-writer".into())
                .spawn(move || {
                    for (snapshot, plan) in job_rx {
                        let result = perform(&thread_dir, retention, &snapshot, &plan);
                        if done_tx.send(result).is_err() {
                            break;
                        }
                    }
                })
                .expect("spawning the checkpoint writer thread");
            Worker { jobs: job_tx, results: done_rx, thread: handle }
        });
        Self { dir, retention, policy, config_sha256, rank, worker, in_flight: false }
    }

    /// Plans a save of `state` (`latest`, and the epoch's file when `epoch_file`), snapshots
    /// its tensors and writes them (in the background when so built). Returns the seconds the
    /// caller was blocked, and the report of the save that finished meanwhile, if any (in the
    /// background case, that is the *previous* save).
    pub fn submit(
        &mut self,
        state: TrainingState,
        epoch_file: bool,
    ) -> Result<(f64, Option<SaveReport>), CheckpointError> {
        let start = Instant::now();
        let previous = self.wait()?;
        let (model, optimizer) = state.sizes();
        let items = save::items(model, optimizer);
        let plan = save::plan(&items, &state.progress, &self.config_sha256, epoch_file, self.policy, self.rank);
        let snapshot = snapshot(state.into_tensors());
        let report = match &self.worker {
            None => Some(perform(&self.dir, self.retention, &snapshot, &plan)?),
            Some(worker) => {
                worker.jobs.send((snapshot, plan)).expect("the checkpoint writer thread outlives the saver");
                self.in_flight = true;
                previous
            }
        };
        Ok((start.elapsed().as_secs_f64(), report))
    }

    /// Waits for the save in flight, if any, and returns its report.
    pub fn wait(&mut self) -> Result<Option<SaveReport>, CheckpointError> {
        match (&self.worker, self.in_flight) {
            (Some(worker), true) => {
                self.in_flight = false;
                worker.results.recv().expect("the checkpoint writer thread answers every job").map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Waits for the save in flight and stops the writer thread.
    pub fn finish(mut self) -> Result<Option<SaveReport>, CheckpointError> {
        let report = self.wait();
        if let Some(worker) = self.worker.take() {
            drop(worker.jobs);
            let _ = worker.thread.join();
        }
        report
    }
}

/// Copies every tensor to fresh host memory: on a GPU a device-to-host copy, on the CPU a
/// plain copy (training mutates the originals in place right after).
fn snapshot(tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    let _guard = tch::no_grad_guard();
    tensors
        .into_iter()
        .map(|(name, t)| {
            let host = if t.device() == Device::Cpu { t.copy() } else { t.to_device(Device::Cpu) };
            (name, host)
        })
        .collect()
}

/// Carries out `plan` over `tensors` (its items, in order): checks the space, writes each
/// file, verifies `latest`, and applies retention.
fn perform(
    dir: &Path,
    retention: Policy,
    tensors: &[(String, Tensor)],
    plan: &SavePlan,
) -> Result<SaveReport, CheckpointError> {
    let start = Instant::now();
    let mut report = SaveReport::default();
    if plan.files.is_empty() {
        return Ok(report);
    }
    std::fs::create_dir_all(dir).map_err(|source| FileError::Io { path: dir.to_path_buf(), source })?;
    let available = fs4::available_space(dir).map_err(|source| FileError::Io { path: dir.to_path_buf(), source })?;
    if available < plan.needed_bytes {
        return Err(CheckpointError::DiskFull { dir: dir.to_path_buf(), needed: plan.needed_bytes, available });
    }

    let mut latest_verified = false;
    for file in &plan.files {
        let chosen: Vec<(String, Tensor)> =
            file.items.iter().map(|&i| (tensors[i].0.clone(), tensors[i].1.shallow_clone())).collect();
        let (path, size) = store::write_atomic(dir, file.slot, plan.compress, &chosen, &file.meta)?;
        if file.slot == Slot::Latest {
            latest_verified = match CheckpointFile::open(&path).and_then(|f| f.verify()) {
                Ok(_) => true,
                Err(e) => {
                    tracing::error!("{e}: keeping every older checkpoint");
                    false
                }
            };
        }
        report.written.push((path, size));
    }

    let epochs: Vec<(PathBuf, EpochEntry)> = store::list(dir)?
        .into_iter()
        .filter_map(|(path, slot)| match slot {
            Slot::Epoch(epoch) => {
                let meta = CheckpointFile::open(&path).ok().and_then(|f| f.meta().cloned());
                let (val_loss, val_accuracy) = (meta.as_ref().map(|m| m.val_loss), meta.map(|m| m.val_accuracy));
                Some((path, EpochEntry { epoch, val_loss, val_accuracy }))
            }
            Slot::Latest => None,
        })
        .collect();
    let entries: Vec<EpochEntry> = epochs.iter().map(|(_, e)| *e).collect();
    for epoch in retention::to_delete(&entries, retention, latest_verified) {
        for (path, _) in epochs.iter().filter(|(_, e)| e.epoch == epoch) {
            std::fs::remove_file(path).map_err(|source| FileError::Io { path: path.clone(), source })?;
            tracing::info!(path = %path.display(), "checkpoint rotated away");
            report.deleted.push(path.clone());
        }
    }
    report.write_seconds = start.elapsed().as_secs_f64();
    for (path, bytes) in &report.written {
        tracing::info!(path = %path.display(), bytes, "checkpoint saved");
    }
    Ok(report)
}

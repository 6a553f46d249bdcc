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
use train_store::Error as FileError;

use tch::{Device, Tensor};

use super::format::{tensor_bytes, Meta};
use super::retention::{self, EpochEntry, Policy};
use super::source::CheckpointFile;
use super::store::{self, Role};
use super::{CheckpointError, OPTIMIZER_PREFIX};

/// Bytes of slack beyond the tensors' size when checking free space: the metadata and the
/// file system's block rounding of two files (a few KiB); plus [`SPACE_PER_TENSOR`] and 1%
/// below. A flat 1 MiB refused a 0.82 MB save with 1.69 MB free.
const SPACE_SLACK: u64 = 64 << 10;
/// Header bytes per tensor (name, dtype, shape, offsets, checksum: ~150 in practice).
const SPACE_PER_TENSOR: u64 = 512;

/// What one save writes.
pub struct SaveRequest {
    /// Every tensor, weights and `optimizer/...` state, on any device (snapshotted by submit).
    pub tensors: Vec<(String, Tensor)>,
    /// Metadata for `latest` (which always holds optimiser state).
    pub meta: Meta,
    /// Also write `epoch-NNNN` for `meta.epoch`.
    pub epoch_file: bool,
    /// Whether the epoch file keeps the optimiser state.
    pub epoch_with_optimizer: bool,
    /// Write compressed files.
    pub compress: bool,
}

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

type Job = (Vec<(String, Tensor)>, SaveRequest);

/// The background writer: jobs in, results out, and its thread.
struct Worker {
    jobs: mpsc::SyncSender<Job>,
    results: mpsc::Receiver<Result<SaveReport, CheckpointError>>,
    thread: JoinHandle<()>,
}

/// Writes checkpoints into one folder, synchronously or on a background thread.
pub struct Saver {
    dir: PathBuf,
    policy: Policy,
    worker: Option<Worker>,
    in_flight: bool,
}

impl Saver {
    /// A saver into `dir`; `background` moves the writing to a thread of its own.
    pub fn new(dir: PathBuf, policy: Policy, background: bool) -> Self {
        let worker = background.then(|| {
            let (job_tx, job_rx) = mpsc::sync_channel::<Job>(1);
            let (done_tx, done_rx) = mpsc::channel();
            let thread_dir = dir.clone();
            let handle = std::thread::Builder::new()
                .name("checkpoint-writer".into())
                .spawn(move || {
                    for (snapshot, request) in job_rx {
                        let result = perform(&thread_dir, policy, &snapshot, &request);
                        if done_tx.send(result).is_err() {
                            break;
                        }
                    }
                })
                .expect("spawning the checkpoint writer thread");
            Worker { jobs: job_tx, results: done_rx, thread: handle }
        });
        Self { dir, policy, worker, in_flight: false }
    }

    /// Snapshots the request's tensors and saves them (in the background when so built).
    /// Returns the seconds the caller was blocked, and the report of the save that finished
    /// meanwhile, if any (in the background case, that is the *previous* save).
    pub fn submit(&mut self, mut request: SaveRequest) -> Result<(f64, Option<SaveReport>), CheckpointError> {
        let start = Instant::now();
        let previous = self.wait()?;
        let snapshot = snapshot(std::mem::take(&mut request.tensors));
        let report = match &self.worker {
            None => Some(perform(&self.dir, self.policy, &snapshot, &request)?),
            Some(worker) => {
                worker.jobs.send((snapshot, request)).expect("the checkpoint writer thread outlives the saver");
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

fn perform(
    dir: &Path,
    policy: Policy,
    tensors: &[(String, Tensor)],
    request: &SaveRequest,
) -> Result<SaveReport, CheckpointError> {
    let start = Instant::now();
    let bytes_of = |ts: &mut dyn Iterator<Item = &(String, Tensor)>| -> u64 { ts.map(|(_, t)| tensor_bytes(t)).sum() };
    let all_bytes = bytes_of(&mut tensors.iter());
    let weights: Vec<(String, Tensor)> = tensors
        .iter()
        .filter(|(n, _)| request.epoch_with_optimizer || !n.starts_with(OPTIMIZER_PREFIX))
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let payload = all_bytes + if request.epoch_file { bytes_of(&mut weights.iter()) } else { 0 };
    let files = if request.epoch_file { 2 } else { 1 };
    let needed = payload + payload / 100 + SPACE_SLACK + files * SPACE_PER_TENSOR * tensors.len() as u64;
    std::fs::create_dir_all(dir).map_err(|source| FileError::Io { path: dir.to_path_buf(), source })?;
    let available = fs4::available_space(dir).map_err(|source| FileError::Io { path: dir.to_path_buf(), source })?;
    if available < needed {
        return Err(CheckpointError::DiskFull { dir: dir.to_path_buf(), needed, available });
    }

    let mut report = SaveReport::default();
    if request.epoch_file {
        let mut meta = request.meta.clone();
        meta.has_optimizer_state = request.epoch_with_optimizer;
        let written = store::write_atomic(dir, Role::Epoch(meta.epoch()), request.compress, &weights, &meta)?;
        report.written.push(written);
    }
    let (latest, size) = store::write_atomic(dir, Role::Latest, request.compress, tensors, &request.meta)?;
    let latest_verified = match CheckpointFile::open(&latest).and_then(|f| f.verify()) {
        Ok(_) => true,
        Err(e) => {
            tracing::error!("{e}: keeping every older checkpoint");
            false
        }
    };
    report.written.push((latest, size));

    let epochs: Vec<(PathBuf, EpochEntry)> = store::list(dir)?
        .into_iter()
        .filter_map(|(path, role)| match role {
            Role::Epoch(epoch) => {
                let meta = CheckpointFile::open(&path).ok().and_then(|f| f.meta().cloned());
                let (val_loss, val_accuracy) = (meta.as_ref().map(|m| m.val_loss), meta.map(|m| m.val_accuracy));
                Some((path, EpochEntry { epoch, val_loss, val_accuracy }))
            }
            Role::Latest => None,
        })
        .collect();
    let entries: Vec<EpochEntry> = epochs.iter().map(|(_, e)| *e).collect();
    for epoch in retention::to_delete(&entries, policy, latest_verified) {
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

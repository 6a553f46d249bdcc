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

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};
use train_ckpt::meta::{seal, METADATA_CHECKSUM_KEY};
use train_ckpt::sharded::{shard_file_name, Index, IndexPiece, IndexTensor, ShardRecord};
use train_ckpt::{CheckpointFile, Error as FileError};

use super::error::CheckpointError;
use super::plan::retention::{self, EpochEntry, Policy};
use super::plan::save::{self, SavePlan, SavePolicy, Slot};
use super::state::{Shard, TrainingState};
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

/// How the ranks of a job agree on a sharded save: every rank hands in its shard's
/// record for the save `key`; rank 0 gets them all, in rank order, the others `None`.
pub trait ShardExchange {
    /// See the trait's doc.
    fn gather(&self, key: &str, record: &str) -> Result<Option<Vec<String>>, CheckpointError>;
}

/// What a rank tells rank 0 of its shard of one file: the file (none when the rank holds
/// nothing of it) and its pieces, each in an [`IndexTensor`] of one piece.
#[derive(Debug, Serialize, Deserialize)]
struct ShardManifest {
    file: Option<ShardRecord>,
    tensors: Vec<IndexTensor>,
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
    /// With sharded state: how the ranks agree on each save.
    exchange: Option<Rc<dyn ShardExchange>>,
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
        Self { dir, retention, policy, config_sha256, rank, worker, in_flight: false, exchange: None }
    }

    /// The saver of one rank of a job with sharded state: every rank writes its shard of
    /// each checkpoint, synchronously (the ranks must agree before the index is written),
    /// and rank 0 the index, through `exchange`.
    pub fn sharded(
        dir: PathBuf,
        retention: Policy,
        policy: SavePolicy,
        config_sha256: String,
        rank: usize,
        exchange: Rc<dyn ShardExchange>,
    ) -> Self {
        let mut saver = Self::new(dir, retention, policy, config_sha256, rank, false);
        saver.exchange = Some(exchange);
        saver
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
        let sharded = state.shard.is_some();
        let plan =
            save::plan(&items, &state.progress, &self.config_sha256, epoch_file, self.policy, self.rank, sharded);
        if let Some(shard) = state.shard.clone() {
            let exchange = self.exchange.clone().expect("a job with sharded state saves through Saver::sharded");
            let layout = layout(&state, &shard);
            // Written synchronously, while training waits: straight from the live tensors, with
            // no snapshot (which would hold a second copy of the rank's state).
            let tensors = state.into_tensors();
            let sharded = Sharded { shard: &shard, layout: &layout, exchange: &*exchange };
            let report = perform_sharded(&self.dir, self.retention, &tensors, &plan, &sharded)?;
            return Ok((start.elapsed().as_secs_f64(), Some(report)));
        }
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
    check_space(dir, plan)?;

    let mut latest_verified = false;
    for file in &plan.files {
        let chosen: Vec<(String, Tensor)> =
            file.items.iter().map(|&i| (tensors[i].0.clone(), tensors[i].1.shallow_clone())).collect();
        let (path, size) = store::write_atomic(dir, file.slot, plan.compress, &chosen, &file.meta)?;
        if file.slot == Slot::Latest {
            latest_verified = sound(CheckpointFile::open(&path).and_then(|f| f.verify()));
        }
        report.written.push((path, size));
    }
    rotate(dir, retention, latest_verified, &mut report)?;
    Ok(finished(report, start))
}

/// Creates `dir` and refuses a save that needs more space than it has (nothing written).
fn check_space(dir: &Path, plan: &SavePlan) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(|source| FileError::Io { path: dir.to_path_buf(), source })?;
    let available = fs4::available_space(dir).map_err(|source| FileError::Io { path: dir.to_path_buf(), source })?;
    if available < plan.needed_bytes {
        return Err(CheckpointError::DiskFull { dir: dir.to_path_buf(), needed: plan.needed_bytes, available });
    }
    Ok(())
}

/// Whether the `latest` just written reads back; if not, says so (retention then keeps
/// every older checkpoint).
fn sound<T>(check: Result<T, FileError>) -> bool {
    match check {
        Ok(_) => true,
        Err(e) => {
            tracing::error!("{e}: keeping every older checkpoint");
            false
        }
    }
}

/// The report of a save that began at `start`, its files logged.
fn finished(mut report: SaveReport, start: Instant) -> SaveReport {
    report.write_seconds = start.elapsed().as_secs_f64();
    for (path, bytes) in &report.written {
        tracing::info!(path = %path.display(), bytes, "checkpoint saved");
    }
    report
}

/// Retention: the epoch checkpoints to delete (none unless `latest` was verified), each
/// deleted (a sharded one's index, then the shards no index names any more).
fn rotate(
    dir: &Path,
    retention: Policy,
    latest_verified: bool,
    report: &mut SaveReport,
) -> Result<(), CheckpointError> {
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
    store::remove_unreferenced_shards(dir)?;
    Ok(())
}

/// A sharded save's particulars: this rank's share, where each item's elements lie in its
/// whole tensor, and how the ranks agree.
struct Sharded<'a> {
    shard: &'a Shard,
    layout: &'a [Placed],
    exchange: &'a dyn ShardExchange,
}

/// Where an item's elements lie: its whole tensor's shape, and its first element and count.
#[derive(Debug, Clone)]
struct Placed {
    shape: Vec<usize>,
    offset: u64,
    len: u64,
}

/// Where each tensor of `state` (in [`TrainingState::into_tensors`]'s order) lies in its
/// whole tensor: a piece of a parameter, or of its optimiser slot (but `step`), as `shard`
/// records; anything else whole.
fn layout(state: &TrainingState, shard: &Shard) -> Vec<Placed> {
    let pieces: HashMap<&str, _> = shard.pieces.iter().map(|p| (p.name.as_str(), p)).collect();
    let whole =
        |t: &Tensor| Placed { shape: t.size().iter().map(|&d| d as usize).collect(), offset: 0, len: t.numel() as u64 };
    let piece = |name: &str, t: &Tensor| match pieces.get(name) {
        Some(p) => Placed { shape: p.shape.clone(), offset: p.offset, len: p.len },
        None => whole(t),
    };
    let model = state.model.iter().map(|(n, t)| piece(n, t));
    let optimizer = state.optimizer.iter().map(|(k, t)| match k.rsplit_once('/') {
        Some((param, slot)) if slot != "step" => piece(param, t),
        _ => whole(t),
    });
    model.chain(optimizer).collect()
}

/// Carries out a sharded `plan`: for each file, this rank writes its shard (its items),
/// reads it back and checks it, and hands its record to rank 0, which writes the index
/// (last: the checkpoint exists from then on), checks that it opens, and applies retention.
fn perform_sharded(
    dir: &Path,
    retention: Policy,
    tensors: &[(String, Tensor)],
    plan: &SavePlan,
    sh: &Sharded<'_>,
) -> Result<SaveReport, CheckpointError> {
    let start = Instant::now();
    let mut report = SaveReport::default();
    let Shard { rank, world, .. } = *sh.shard;
    check_space(dir, plan)?;
    let mut latest_verified = false;
    for file in &plan.files {
        let step = file.meta.position.step;
        let stem = store::stem(file.slot);
        let mut manifest = ShardManifest { file: None, tensors: Vec::new() };
        if !file.items.is_empty() {
            let name = shard_file_name(&stem, step, rank, world, plan.compress);
            let chosen: Vec<(String, Tensor)> =
                file.items.iter().map(|&i| (tensors[i].0.clone(), tensors[i].1.shallow_clone())).collect();
            let (path, size) = store::write_named(dir, &name, plan.compress, &chosen, &file.meta)?;
            // A shard that does not read back is never announced: the index would name it.
            let written = CheckpointFile::open(&path)?;
            written.verify()?;
            let seal = written.metadata().get(METADATA_CHECKSUM_KEY).cloned().unwrap_or_default();
            manifest.file = Some(ShardRecord { file: name, bytes: size, seal });
            manifest.tensors = file
                .items
                .iter()
                .map(|&i| {
                    let (name, t) = &tensors[i];
                    let p = &sh.layout[i];
                    // The shard was written, so its dtypes are ones a checkpoint holds.
                    let dtype = crate::dtype::from_kind(t.kind()).ok_or_else(|| CheckpointError::Exchange {
                        key: name.clone(),
                        message: format!("tensor `{name}` has no checkpoint dtype ({:?})", t.kind()),
                    })?;
                    let piece = IndexPiece { shard: 0, offset: p.offset, len: p.len };
                    Ok(IndexTensor { name: name.clone(), dtype, shape: p.shape.clone(), pieces: vec![piece] })
                })
                .collect::<Result<_, CheckpointError>>()?;
            report.written.push((path, size));
        }
        crate::fault::check_sharded_save(step);
        let key = format!("checkpoint/{stem}/{step}");
        let record = serde_json::to_string(&manifest).expect("plain data");
        let Some(records) = sh.exchange.gather(&key, &record)? else { continue };
        let index = index_of(&key, &records, world, seal(file.meta.to_map()))?;
        let (path, size) = store::write_index(dir, file.slot, &index)?;
        // Its shards were checked by their writers; opening it checks them against it.
        if file.slot == Slot::Latest {
            latest_verified = sound(CheckpointFile::open(&path));
        }
        report.written.push((path, size));
    }
    if rank == 0 {
        rotate(dir, retention, latest_verified, &mut report)?;
    }
    Ok(finished(report, start))
}

/// The index of every rank's `records` (in rank order) of one save: the shards that hold
/// something, numbered in that order, and each tensor's pieces in element order.
fn index_of(
    key: &str,
    records: &[String],
    world: u32,
    metadata: HashMap<String, String>,
) -> Result<Index, CheckpointError> {
    let mut shards = Vec::new();
    let mut tensors: BTreeMap<String, IndexTensor> = BTreeMap::new();
    for (rank, record) in records.iter().enumerate() {
        let m: ShardManifest = serde_json::from_str(record).map_err(|e| CheckpointError::Exchange {
            key: key.into(),
            message: format!("rank {rank}'s record does not parse: {e}"),
        })?;
        let Some(file) = m.file else { continue };
        let position = shards.len();
        shards.push(file);
        for t in m.tensors {
            let pieces = t.pieces.iter().map(|p| IndexPiece { shard: position, ..*p });
            match tensors.get_mut(&t.name) {
                Some(whole) => whole.pieces.extend(pieces),
                None => {
                    let pieces = pieces.collect();
                    tensors.insert(t.name.clone(), IndexTensor { pieces, ..t });
                }
            }
        }
    }
    let mut tensors: Vec<IndexTensor> = tensors.into_values().collect();
    for t in &mut tensors {
        t.pieces.sort_by_key(|p| p.offset);
    }
    let index = Index::new(world, metadata, shards, tensors);
    // What the ranks wrote must make a whole checkpoint: checked as a reader checks it.
    Index::parse(index.to_json().as_bytes())
        .map_err(|message| CheckpointError::Exchange { key: key.into(), message })?;
    Ok(index)
}

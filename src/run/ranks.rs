//! A run as one rank of a data-parallel job (see [`crate::distributed`]).
//!
//! - The job is planned with the global batch (`training.batch_size` × world, see
//!   [`super::job::PlannedConfig`]). Each rank trains its strided share of every batch
//!   ([`crate::data::shard`]).
//! - Rank 0 alone takes the run folder, decides where to start from, and writes; it tells
//!   the others through the store ([`LeaderStart`]), every rank loads that same checkpoint
//!   (a shared file system, as torchrun and Slurm jobs have), and rank 0's parameters and
//!   buffers are then broadcast to all.
//! - The other ranks learn it with [`await_leader`], then run the same loop with no saver and
//!   no metrics log (see [`super::orchestrator`]).
//! - Before any of that, [`check_same_config`]: ranks started with different settings
//!   (another learning rate, batch or data) are refused on every rank, the keys named; and
//!   [`check_same_data`]: ranks that found different numbers of examples are refused too.

use std::path::PathBuf;
use std::rc::Rc;

use super::error::RunError;
use super::job::{PlannedConfig, UserConfig};
use crate::checkpoint::saver::ShardExchange;
use crate::checkpoint::CheckpointError;
use crate::config::Config;
use crate::device::DeviceSpec;
use crate::distributed::{plan, Dist, DistError, Launch, ShardChoice, Stage, Zero};
use crate::training::Trainer;

/// The store key under which rank 0 announces how the run starts.
const START_KEY: &str = "run/start";

/// The store keys under which each rank publishes its configuration (`config/<rank>`).
const CONFIG_KEY: &str = "config";

/// Keys that may differ between the ranks: where each rank runs and with how many threads,
/// the folder and resume choice that rank 0 alone acts on, and the memory figures each
/// rank plans its own device with. Every other key must be the same on every rank.
const RANK_LOCAL_KEYS: &[&str] =
    &["run.device", "run.output_dir", "run.resume", "run.threads", "memory.assume_free_vram", "memory.vram_limit"];

/// How rank 0 started the run, as the other ranks learn it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderStart {
    /// From scratch.
    Fresh,
    /// From this checkpoint.
    From(PathBuf),
    /// A stop request arrived during start-up: nothing to train, exit 75.
    Stopped,
    /// Rank 0 failed to start, with its error.
    Failed(String),
}

impl LeaderStart {
    fn encode(&self) -> String {
        match self {
            Self::Fresh => "fresh".into(),
            Self::From(p) => format!("from\n{}", p.display()),
            Self::Stopped => "stopped".into(),
            Self::Failed(m) => format!("failed\n{m}"),
        }
    }

    fn decode(s: &str) -> Self {
        match s.split_once('\n') {
            Some(("from", p)) => Self::From(PathBuf::from(p)),
            Some(("failed", m)) => Self::Failed(m.into()),
            _ if s == "fresh" => Self::Fresh,
            _ if s == "stopped" => Self::Stopped,
            _ => Self::Failed(format!("rank 0 announced {s:?}, which this version of train does not know")),
        }
    }
}

/// The device of a rank: on CUDA, the GPU of its local rank, unless `run.device` names one
/// other than the first (`cuda:N`, for jobs that map GPUs to ranks themselves).
pub fn device_for(selected: tch::Device, spec: DeviceSpec, launch: Option<&Launch>) -> Result<tch::Device, RunError> {
    let (Some(l), tch::Device::Cuda(_)) = (launch, selected) else { return Ok(selected) };
    if matches!(spec, DeviceSpec::Cuda(n) if n > 0) {
        return Ok(selected);
    }
    let count = tch::Cuda::device_count();
    if i64::from(l.local_rank) >= count {
        return Err(RunError::Device(format!(
            "local rank {} trains on cuda:{}, but libtorch sees {count} CUDA device(s) on this node: start at most \
             {count} ranks per node (torchrun --nproc-per-node, srun --ntasks-per-node)",
            l.local_rank, l.local_rank
        )));
    }
    Ok(tch::Device::Cuda(l.local_rank as usize))
}

/// Rank 0 tells the others how the run starts (no-op for a single process).
pub fn announce(dist: Option<&Dist>, start: &LeaderStart) -> Result<(), RunError> {
    if let Some(d) = dist {
        let start = match start {
            LeaderStart::From(p) => LeaderStart::From(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())),
            other => other.clone(),
        };
        d.share(START_KEY, Some(&start.encode()))?;
    }
    Ok(())
}

/// Makes `trainer` one rank of the job: rank 0's parameters and buffers copied to every
/// rank (after a fresh start or a resume), and, with `distributed.overlap`, DDP's Reducer
/// attached to its parameters.
pub fn join(dist: &Rc<Dist>, trainer: &mut Trainer, cfg: &PlannedConfig) -> Result<(), DistError> {
    let mut vars: Vec<(String, tch::Tensor)> = trainer.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    if dist.is_leader() && dist.world() > 1 {
        warn_of_running_statistics(&vars);
    }
    let tensors: Vec<tch::Tensor> = vars.iter().map(|(_, t)| t.shallow_clone()).collect();
    dist.broadcast(&tensors)?;
    if cfg.distributed.overlap && trainer.shard_stage() != Some(Stage::OptimizerAndGradients) {
        // The Reducer's order is the trainable variables' (the same on every rank); names
        // come from the variables sharing their storage.
        let params = trainer
            .vs
            .trainable_variables()
            .into_iter()
            .map(|t| {
                let name = vars.iter().find(|(_, v)| v.data_ptr() == t.data_ptr()).map(|(n, _)| n.clone());
                (name.unwrap_or_else(|| "an unnamed parameter".into()), t)
            })
            .collect();
        dist.attach_reducer(params, cfg.distributed.find_unused_parameters)?;
    }
    trainer.dist = Some(Rc::clone(dist));
    Ok(())
}

/// Shards `trainer`'s optimiser state (and with ZeRO-2 its gradients) over the job, as
/// `distributed.shard` says; a no-op for `none`.
pub fn shard(dist: &Dist, trainer: &mut Trainer, cfg: &PlannedConfig) -> Result<(), DistError> {
    let stage = match cfg.distributed.shard {
        ShardChoice::None => return Ok(()),
        ShardChoice::Optimizer => Stage::Optimizer,
        ShardChoice::OptimizerAndGradients => Stage::OptimizerAndGradients,
        ShardChoice::Auto => match auto_stage(cfg, trainer, dist)? {
            Some(stage) => stage,
            None => return Ok(()),
        },
    };
    let params: Vec<(String, tch::Tensor)> =
        trainer.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    let zero = Zero::new(stage, params, dist.rank(), dist.world())?;
    if stage == Stage::OptimizerAndGradients && cfg.distributed.overlap && dist.is_leader() {
        tracing::info!(
            "distributed.shard: optimizer_and_gradients reduce-scatters the gradients after backward; \
             DDP's Reducer (distributed.overlap) is not used"
        );
    }
    trainer.shard(zero);
    Ok(())
}

/// `distributed.shard: auto` for this rank's device, logged with its reason. The ranks
/// must agree: every rank probes its own device, and the leader's choice is taken by all
/// (published through the store).
fn auto_stage(cfg: &PlannedConfig, trainer: &Trainer, dist: &Dist) -> Result<Option<Stage>, DistError> {
    let trainable = trainer.vs.trainable_variables();
    let params: u64 = trainable.iter().map(crate::checkpoint::tensors::tensor_bytes).sum();
    let count = trainable.len() as u64;
    let state = crate::optim::state_bytes(&cfg.training.optimizer, params, count);
    let choices = plan::per_rank(params, state, dist.world());
    let resident = params;
    let budget =
        crate::checkpoint::plan::load::budget(&cfg.memory, trainer.device, resident, &crate::memory::probe::Nvml);
    let (stage, reason) = plan::auto(&choices, budget.free_bytes, dist.world());
    let mine = stage.map_or("none", Stage::name);
    let chosen = dist.share("run/shard-auto", Some(mine))?;
    if dist.is_leader() {
        tracing::info!(shard = %chosen, budget_source = %budget.source, "distributed.shard: auto chose {chosen}: {reason}");
    }
    Ok(match chosen.as_str() {
        "optimizer" => Some(Stage::Optimizer),
        "optimizer_and_gradients" => Some(Stage::OptimizerAndGradients),
        _ => None,
    })
}

/// How the ranks agree on a sharded save: through the job's store (each rank's record of
/// its shard under `<key>/<rank>`, rank 0 reading them all, waiting up to the timeout).
pub struct StoreExchange(pub Rc<Dist>);

impl ShardExchange for StoreExchange {
    fn gather(&self, key: &str, record: &str) -> Result<Option<Vec<String>>, CheckpointError> {
        let d = &self.0;
        let failed = |e: DistError| CheckpointError::Exchange { key: key.into(), message: e.to_string() };
        d.publish(&format!("{key}/{}", d.rank()), record).map_err(failed)?;
        if !d.is_leader() {
            return Ok(None);
        }
        (0..d.world()).map(|r| d.read(&format!("{key}/{r}")).map_err(failed)).collect::<Result<_, _>>().map(Some)
    }
}

/// BatchNorm-style running statistics (`running_mean`, `running_var`) are each rank's own
/// during an epoch and rank 0's in a checkpoint; the user is told once, at the start.
fn warn_of_running_statistics(vars: &[(String, tch::Tensor)]) {
    let stats: Vec<&str> = vars
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| n.ends_with("running_mean") || n.ends_with("running_var"))
        .collect();
    if !stats.is_empty() {
        tracing::warn!(
            "data parallel: {} running-statistic buffer(s) ({}) are not averaged over the ranks: each rank updates \
             its own from its share of the batch, and rank 0's are copied to every rank at each evaluation and save \
             (as DDP's broadcast_buffers), so all ranks evaluate, and checkpoints hold, rank 0's",
            stats.len(),
            crate::distributed::name_list(&stats)
        );
    }
}

/// The configuration as dotted keys and their values (JSON text), without [`RANK_LOCAL_KEYS`].
fn comparable(cfg: &Config) -> std::collections::BTreeMap<String, String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut std::collections::BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            other => {
                if !RANK_LOCAL_KEYS.contains(&prefix) {
                    out.insert(prefix.to_string(), other.to_string());
                }
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk("", &serde_json::to_value(cfg).expect("the config schema serializes to JSON"), &mut out);
    out
}

/// The keys whose values differ between rank 0's configuration `a` and rank `rank`'s `b`,
/// each with both values.
fn differences(
    a: &std::collections::BTreeMap<String, String>,
    b: &std::collections::BTreeMap<String, String>,
    rank: usize,
) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let none = "(unset)".to_string();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!("{k} is {} on rank 0 but {} on rank {rank}", a.get(k).unwrap_or(&none), b.get(k).unwrap_or(&none))
        })
        .collect()
}

/// Refuses, on every rank, a job whose ranks found different data under the same settings
/// (a data folder that differs between nodes, files added while the job started): each
/// rank draws the epoch's order over its own count, so the ranks would train on different
/// permutations, some examples twice and some never, and exit 0. One all-reduce of every
/// rank's training and validation counts tells each rank all of them.
pub fn check_same_data(dist: &Dist, train: usize, val: usize) -> Result<(), DistError> {
    let (rank, world) = (dist.rank() as usize, dist.world() as usize);
    let mut counts = vec![0.0; 2 * world];
    (counts[2 * rank], counts[2 * rank + 1]) = (train as f64, val as f64);
    let counts = dist.sum(&counts)?;
    let at = |r: usize| (counts[2 * r] as u64, counts[2 * r + 1] as u64);
    match (1..world).find(|&r| at(r) != at(0)) {
        None => Ok(()),
        Some(r) => Err(DistError::ConfigMismatch(format!(
            "rank 0 found {} training and {} validation examples, rank {r} {} and {}: every rank must read the same \
             data (check data.dir / data.path on each node)",
            at(0).0,
            at(0).1,
            at(r).0,
            at(r).1
        ))),
    }
}

/// Refuses, on every rank, a job whose ranks were started with different settings (all but
/// [`RANK_LOCAL_KEYS`]): another learning rate or seed trains ranks that silently diverge,
/// another batch or data size breaks the collectives. Each rank publishes its resolved
/// configuration in the store and compares it with rank 0's; one all-reduce tells every
/// rank which ranks differ, and each then names the keys of the first of them.
pub fn check_same_config(dist: &Dist, cfg: &UserConfig) -> Result<(), DistError> {
    let mine = comparable(cfg);
    let text = |c: &std::collections::BTreeMap<String, String>| serde_json::to_string(c).expect("strings serialize");
    let parse = |s: String, rank: usize| -> std::collections::BTreeMap<String, String> {
        serde_json::from_str(&s).unwrap_or_else(|_| [(format!("(rank {rank}'s configuration)"), s)].into())
    };
    let (rank, world) = (dist.rank() as usize, dist.world() as usize);
    dist.publish(&format!("{CONFIG_KEY}/{rank}"), &text(&mine))?;
    let leader = if rank == 0 { mine.clone() } else { parse(dist.read(&format!("{CONFIG_KEY}/0"))?, 0) };
    let mut differs = vec![0.0; world];
    differs[rank] = f64::from(u8::from(leader != mine));
    let differs = dist.sum(&differs)?;
    let Some(first) = differs.iter().position(|&d| d > 0.0) else { return Ok(()) };
    let theirs = if first == rank { mine } else { parse(dist.read(&format!("{CONFIG_KEY}/{first}"))?, first) };
    let mut found = differences(&leader, &theirs, first);
    let others = differs.iter().filter(|&&d| d > 0.0).count() - 1;
    if others > 0 {
        found.push(format!("and {others} more rank(s) differ from rank 0"));
    }
    // Every rank has read what it needs before any leaves (rank 0 may host the store).
    dist.barrier()?;
    Err(DistError::ConfigMismatch(format!("{}; start every rank with the same settings", found.join("; "))))
}

/// A rank other than 0: how rank 0 started the run, once it has said so ([`announce`]).
pub fn await_leader(dist: &Dist) -> Result<LeaderStart, DistError> {
    Ok(LeaderStart::decode(&dist.share(START_KEY, None)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_announcement_round_trips() {
        for s in [
            LeaderStart::Fresh,
            LeaderStart::Stopped,
            LeaderStart::From(PathBuf::from("/runs/a b/checkpoints/latest.ckpt")),
            LeaderStart::Failed("cannot resume:\nsecond line".into()),
        ] {
            assert_eq!(LeaderStart::decode(&s.encode()), s);
        }
        assert!(matches!(LeaderStart::decode("bogus"), LeaderStart::Failed(_)));
    }

    #[test]
    fn configurations_differing_only_in_rank_local_keys_compare_equal() {
        let a = Config::default();
        let mut b = a.clone();
        b.run.device = DeviceSpec::Cuda(1);
        b.run.output_dir = Some(PathBuf::from("/elsewhere"));
        b.run.threads = Some(3);
        assert_eq!(comparable(&a), comparable(&b));
        b.training.optimizer.lr = 0.5;
        b.training.batch_size = 7;
        let found = differences(&comparable(&a), &comparable(&b), 1);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("training.batch_size is 128 on rank 0 but 7 on rank 1"), "{found:?}");
        assert!(found[1].starts_with("training.optimizer.lr is 0.001 on rank 0 but 0.5 on rank 1"), "{found:?}");
    }
}

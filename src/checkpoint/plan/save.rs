//! The save plan: what one save writes. Pure: it sees names, roles and byte counts, never
//! tensor data or a file, and is the only place that decides what goes into a checkpoint.
//!
//! - `latest` holds everything: the model and the optimiser's state, so a resume is exact.
//! - `epoch-NNNN` holds the model, and the optimiser's state only with
//!   `memory.save_optimizer_in_epoch_checkpoints` (the seed guide's selective saving).
//! - Each file's `has_optimizer_state` says what that file holds, decided here with its
//!   tensors, never patched afterwards.
//! - With replicated state (data-parallel) every rank holds the same tensors, so rank 0
//!   writes them all and the others write nothing. With sharded state every rank writes the
//!   same files' shards (its own pieces), and rank 0 their index (see `saver`).

use crate::checkpoint::config::MemoryConfig;
use crate::checkpoint::state::Progress;
use train_ckpt::{optimizer_entry, Meta, RngState, Role, FORMAT_VERSION};

/// Which file of the run folder a checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    /// `epoch-NNNN`: the state after that epoch.
    Epoch(u32),
    /// `latest`: rewritten at every save.
    Latest,
}

/// The `memory:` switches a save follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavePolicy {
    /// `memory.save_optimizer_in_epoch_checkpoints`.
    pub epoch_with_optimizer: bool,
    /// `memory.compress_checkpoints`.
    pub compress: bool,
}

impl SavePolicy {
    /// The policy the `memory:` section sets.
    pub fn of(cfg: &MemoryConfig) -> Self {
        Self { epoch_with_optimizer: cfg.save_optimizer_in_epoch_checkpoints, compress: cfg.compress_checkpoints }
    }
}

/// One tensor of the state handed over, as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The name it is stored under (optimiser slots under [`optimizer_entry`]).
    pub name: String,
    /// What it is for.
    pub role: Role,
    /// Its size.
    pub bytes: u64,
}

/// The items of a state: the model's tensors under their own names, then the optimiser's
/// slots under their stored names. `model` and `optimizer` give names and byte counts.
pub fn items<'a>(
    model: impl IntoIterator<Item = (&'a str, u64)>,
    optimizer: impl IntoIterator<Item = (&'a str, u64)>,
) -> Vec<Item> {
    let model = model.into_iter().map(|(n, bytes)| Item { name: n.to_string(), role: Role::Model, bytes });
    let optimizer =
        optimizer.into_iter().map(|(k, bytes)| Item { name: optimizer_entry(k), role: Role::Optimizer, bytes });
    model.chain(optimizer).collect()
}

/// One file a save writes.
#[derive(Debug, Clone, PartialEq)]
pub struct FilePlan {
    /// Which file.
    pub slot: Slot,
    /// Indices into the items the plan was made from, in order.
    pub items: Vec<usize>,
    /// Its metadata.
    pub meta: Meta,
}

/// What one save writes, and who writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct SavePlan {
    /// The files, in writing order: the epoch file first, then `latest` (whose rewrite
    /// retention waits for).
    pub files: Vec<FilePlan>,
    /// Whether the files are written compressed.
    pub compress: bool,
    /// Free bytes the folder needs before anything is written (the files, their headers and
    /// the file system's rounding); a save with less is refused with nothing written.
    pub needed_bytes: u64,
}

/// Bytes of slack beyond the tensors' size when checking free space: the metadata and the
/// file system's block rounding of two files (a few KiB); plus [`SPACE_PER_TENSOR`] and 1%
/// below. A flat 1 MiB refused a 0.82 MB save with 1.69 MB free.
const SPACE_SLACK: u64 = 64 << 10;
/// Header bytes per tensor and file (name, dtype, shape, offsets, checksum: ~150 in
/// practice), counted for every tensor of the state in each file written.
const SPACE_PER_TENSOR: u64 = 512;

/// Plans a save of `items` by rank `rank`: `latest` always, and `epoch-NNNN` for the
/// position's epoch when `epoch_file`. With replicated state rank 0 writes everything and
/// any other rank's plan writes nothing; with `sharded` state every rank plans the files
/// (of its own items, which its shard holds) (see the module's doc).
pub fn plan(
    items: &[Item],
    progress: &Progress,
    config_sha256: &str,
    epoch_file: bool,
    policy: SavePolicy,
    rank: usize,
    sharded: bool,
) -> SavePlan {
    let mut files = Vec::new();
    if rank == 0 || sharded {
        if epoch_file {
            let kept = |i: &Item| i.role == Role::Model || (i.role == Role::Optimizer && policy.epoch_with_optimizer);
            files.push(file(Slot::Epoch(progress.standing.position.epoch), items, kept, progress, config_sha256));
        }
        files.push(file(Slot::Latest, items, |_| true, progress, config_sha256));
    }
    let payload: u64 = files.iter().flat_map(|f| &f.items).map(|&i| items[i].bytes).sum();
    let headers = files.len() as u64 * SPACE_PER_TENSOR * items.len() as u64;
    let needed_bytes = if files.is_empty() { 0 } else { payload + payload / 100 + SPACE_SLACK + headers };
    SavePlan { files, compress: policy.compress, needed_bytes }
}

fn file(slot: Slot, items: &[Item], kept: impl Fn(&Item) -> bool, p: &Progress, config_sha256: &str) -> FilePlan {
    let chosen: Vec<usize> = (0..items.len()).filter(|&i| kept(&items[i])).collect();
    let has_optimizer_state = chosen.iter().any(|&i| items[i].role == Role::Optimizer);
    FilePlan { slot, items: chosen, meta: meta(p, config_sha256, has_optimizer_state) }
}

/// The metadata of a checkpoint of `progress` that holds optimiser state or not.
fn meta(p: &Progress, config_sha256: &str, has_optimizer_state: bool) -> Meta {
    Meta {
        format_version: FORMAT_VERSION,
        position: p.standing.position,
        batch_size: Some(p.batch_size),
        train_loss: p.standing.train_loss,
        val_loss: p.standing.val_loss,
        val_accuracy: p.standing.val_accuracy,
        has_optimizer_state,
        optimizer: p.optimizer.clone(),
        lr_scheduler: p.lr_scheduler.clone(),
        rng: RngState { seed: p.seed, scheme: p.rng_scheme.into() },
        config_sha256: config_sha256.into(),
        tool_version: format!("train {}", env!("CARGO_PKG_VERSION")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::state::Standing;
    use train_ckpt::Position;

    fn progress(epoch: u32) -> Progress {
        Progress {
            standing: Standing {
                position: Position { epoch, step: 40, ..Position::default() },
                train_loss: 0.5,
                val_loss: 0.6,
                val_accuracy: 0.7,
            },
            batch_size: 8,
            optimizer: serde_json::json!({"kind": "adamw"}),
            lr_scheduler: serde_json::json!({}),
            seed: 1,
            rng_scheme: "test",
        }
    }

    fn state() -> Vec<Item> {
        items([("fc.weight", 4000), ("fc.bias", 40)], [("fc.weight/exp_avg", 4000), ("fc.weight/step", 8)])
    }

    fn names(items: &[Item], f: &FilePlan) -> Vec<String> {
        f.items.iter().map(|&i| items[i].name.clone()).collect()
    }

    #[test]
    fn latest_holds_everything_and_says_so() {
        let items = state();
        for epoch_with_optimizer in [false, true] {
            let policy = SavePolicy { epoch_with_optimizer, compress: false };
            let plan = plan(&items, &progress(3), "sha", false, policy, 0, false);
            assert_eq!(plan.files.len(), 1);
            let latest = &plan.files[0];
            assert_eq!(latest.slot, Slot::Latest);
            assert_eq!(
                names(&items, latest),
                ["fc.weight", "fc.bias", "optimizer/fc.weight/exp_avg", "optimizer/fc.weight/step"]
            );
            assert!(latest.meta.has_optimizer_state);
        }
    }

    #[test]
    fn epoch_files_keep_optimizer_state_only_when_asked_and_their_flag_follows() {
        let items = state();
        let without = plan(
            &items,
            &progress(3),
            "sha",
            true,
            SavePolicy { epoch_with_optimizer: false, compress: true },
            0,
            false,
        );
        assert_eq!(without.files.iter().map(|f| f.slot).collect::<Vec<_>>(), [Slot::Epoch(3), Slot::Latest]);
        assert_eq!(names(&items, &without.files[0]), ["fc.weight", "fc.bias"]);
        assert!(!without.files[0].meta.has_optimizer_state && without.files[1].meta.has_optimizer_state);
        assert!(without.compress);

        let with = plan(
            &items,
            &progress(3),
            "sha",
            true,
            SavePolicy { epoch_with_optimizer: true, compress: false },
            0,
            false,
        );
        assert_eq!(names(&items, &with.files[0]), names(&items, &with.files[1]));
        assert!(with.files[0].meta.has_optimizer_state);
    }

    #[test]
    fn a_state_without_optimizer_slots_is_never_said_to_hold_some() {
        let items = items([("w", 4)], []);
        let p = plan(
            &items,
            &progress(1),
            "sha",
            true,
            SavePolicy { epoch_with_optimizer: true, compress: false },
            0,
            false,
        );
        assert!(p.files.iter().all(|f| !f.meta.has_optimizer_state));
    }

    #[test]
    fn only_rank_zero_writes() {
        let items = state();
        let policy = SavePolicy { epoch_with_optimizer: false, compress: false };
        let other = plan(&items, &progress(1), "sha", true, policy, 1, false);
        // With sharded state every rank writes its shard of the same files.
        let shard = plan(&items, &progress(1), "sha", true, policy, 1, true);
        assert_eq!(shard.files.iter().map(|f| f.slot).collect::<Vec<_>>(), [Slot::Epoch(1), Slot::Latest]);
        assert!(other.files.is_empty());
        assert_eq!(other.needed_bytes, 0);
    }

    #[test]
    fn the_space_needed_counts_every_file_with_headers_and_slack() {
        let items = state();
        let policy = SavePolicy { epoch_with_optimizer: false, compress: false };
        let latest_only = plan(&items, &progress(1), "sha", false, policy, 0, false);
        let all: u64 = items.iter().map(|i| i.bytes).sum();
        assert_eq!(latest_only.needed_bytes, all + all / 100 + SPACE_SLACK + 4 * SPACE_PER_TENSOR);
        let both = plan(&items, &progress(1), "sha", true, policy, 0, false);
        let both_payload = all + 4040;
        assert_eq!(both.needed_bytes, both_payload + both_payload / 100 + SPACE_SLACK + 8 * SPACE_PER_TENSOR);
    }

    #[test]
    fn the_metadata_records_the_progress() {
        let items = state();
        let p = plan(
            &items,
            &progress(2),
            "abc",
            false,
            SavePolicy { epoch_with_optimizer: false, compress: false },
            0,
            false,
        );
        let m = &p.files[0].meta;
        assert_eq!((m.position.epoch, m.position.step, m.batch_size), (2, 40, Some(8)));
        assert_eq!(
            (m.config_sha256.as_str(), m.rng.scheme.as_str(), m.format_version),
            ("abc", "test", FORMAT_VERSION)
        );
        assert!(m.tool_version.starts_with("train "));
    }
}

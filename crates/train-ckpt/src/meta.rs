//! A checkpoint's metadata ([`Meta`]): where the run stood, how it was configured, and the
//! checksums that seal it, stored as strings in the safetensors `__metadata__` map (or the
//! compressed format's). Independent of any tensor library.
//!
//! See `docs/checkpoint-format.md` for the specification.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Value of the `format` metadata key: marks a file as ours.
pub const FORMAT_NAME: &str = "train.checkpoint";
/// Value of the `format_version` key. Bumped on any change a reader of the previous
/// version would misread; readers refuse versions newer than their own.
///
/// - 1: the first version.
/// - 2: adds [`METADATA_CHECKSUM_KEY`], required from this version on (version-1 files
///   still read, without it).
pub const FORMAT_VERSION: u32 = 2;
/// Metadata key of the per-tensor checksums: a JSON object mapping each tensor name to the
/// xxh3-64 of its bytes, as 16 lowercase hex digits.
pub const CHECKSUMS_KEY: &str = "xxh3";
/// Metadata key of the metadata's own checksum (version 2 on): xxh3-64 of every other
/// key and value, sorted by key, each written as `key NUL value NUL`. It covers the
/// per-tensor checksums too, so no byte a resume reads is left unchecked.
pub const METADATA_CHECKSUM_KEY: &str = "metadata_xxh3";

/// Keys that version 2 introduced: a version-1 writer never wrote them.
const VERSION_2_KEYS: &[&str] = &["batch_size"];

/// How the random draws of a run are reproduced. There is no generator state to save:
/// every draw is a function of the seed and a position (see `training`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RngState {
    /// `training.seed`.
    pub seed: u64,
    /// How the seed is used; a reader must refuse schemes it does not know.
    pub scheme: String,
}

/// Where a run stands: what a checkpoint records and a trainer advances, one struct for
/// both so neither copies the other field by field.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Position {
    /// Epochs completed.
    pub epoch: u32,
    /// Optimiser steps taken.
    pub step: u64,
    /// Batches of epoch `epoch + 1` already trained (non-zero only mid-epoch, e.g. after a
    /// SIGTERM); resuming skips them.
    pub batches_into_epoch: u64,
    /// Sum of per-example losses over those batches, so the epoch's mean comes out the same.
    pub partial_loss_sum: f64,
}

/// The metadata of a checkpoint, stored as strings in the safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Where the run stood when it was written.
    pub position: Position,
    /// `training.batch_size` of the run that wrote it (version 2 on): a mid-epoch position
    /// counts batches of this size.
    pub batch_size: Option<u32>,
    /// Mean training loss of the last epoch.
    pub train_loss: f64,
    /// Validation loss after the last epoch.
    pub val_loss: f64,
    /// Validation accuracy after the last epoch.
    pub val_accuracy: f64,
    /// Whether optimiser-state tensors ([`crate::names::Role::Optimizer`]) are present.
    pub has_optimizer_state: bool,
    /// The optimiser's kind and settings (JSON).
    pub optimizer: serde_json::Value,
    /// The learning-rate schedule and its state (JSON).
    pub lr_scheduler: serde_json::Value,
    /// How random draws are reproduced.
    pub rng: RngState,
    /// SHA-256 of the resolved configuration (JSON), to tell runs apart.
    pub config_sha256: String,
    /// `train <version>` of the writer.
    pub tool_version: String,
}

/// Why metadata could not be used.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum MetaError {
    /// It does not match its own checksum: altered after it was written.
    Corrupt,
    /// A key is missing or does not parse; says which.
    Invalid(String),
}

impl Meta {
    /// Epochs completed.
    pub fn epoch(&self) -> u32 {
        self.position.epoch
    }

    /// Optimiser steps taken.
    pub fn step(&self) -> u64 {
        self.position.step
    }

    /// The metadata map, without the checksums (see [`seal`]).
    pub fn to_map(&self) -> HashMap<String, String> {
        let p = &self.position;
        let mut map = HashMap::from([
            ("format".into(), FORMAT_NAME.into()),
            ("format_version".into(), self.format_version.to_string()),
            ("epoch".into(), p.epoch.to_string()),
            ("step".into(), p.step.to_string()),
            ("batches_into_epoch".into(), p.batches_into_epoch.to_string()),
            ("partial_loss_sum".into(), p.partial_loss_sum.to_string()),
            ("train_loss".into(), self.train_loss.to_string()),
            ("val_loss".into(), self.val_loss.to_string()),
            ("val_accuracy".into(), self.val_accuracy.to_string()),
            ("has_optimizer_state".into(), self.has_optimizer_state.to_string()),
            ("optimizer".into(), self.optimizer.to_string()),
            ("lr_scheduler".into(), self.lr_scheduler.to_string()),
            ("rng".into(), serde_json::to_string(&self.rng).expect("plain struct")),
            ("config_sha256".into(), self.config_sha256.clone()),
            ("tool_version".into(), self.tool_version.clone()),
        ]);
        if let Some(b) = self.batch_size {
            map.insert("batch_size".into(), b.to_string());
        }
        map
    }

    /// Parses a map written by [`Meta::to_map`] and [`seal`], checking the metadata
    /// checksum first (required from format version 2 on).
    pub(crate) fn from_map(map: &HashMap<String, String>) -> Result<Self, MetaError> {
        let invalid = MetaError::Invalid;
        let get = |k: &str| map.get(k).map(String::as_str).ok_or_else(|| invalid(format!("metadata lacks `{k}`")));
        fn parse<T: std::str::FromStr>(k: &str, v: &str) -> Result<T, MetaError> {
            v.parse().map_err(|_| MetaError::Invalid(format!("metadata `{k}` = `{v}` does not parse")))
        }
        match map.get(METADATA_CHECKSUM_KEY) {
            Some(sum) if *sum != metadata_checksum(map) => return Err(MetaError::Corrupt),
            Some(_) => {}
            // Version 1 had no metadata checksum; a newer file without one was altered, and so
            // was a "version 1" holding a key only version 2 writes (a downgrade). The rest of
            // a version-1 file is unchecked: readers report it so, never as checked.
            None if map.get("format_version").map(String::as_str) != Some("1") => return Err(MetaError::Corrupt),
            None if VERSION_2_KEYS.iter().any(|k| map.contains_key(*k)) => return Err(MetaError::Corrupt),
            None => {}
        }
        if get("format")? != FORMAT_NAME {
            return Err(invalid(format!("metadata `format` is `{}`, not `{FORMAT_NAME}`", get("format")?)));
        }
        let format_version: u32 = parse("format_version", get("format_version")?)?;
        if format_version > FORMAT_VERSION {
            return Err(invalid(format!(
                "format version {format_version} is newer than this train reads ({FORMAT_VERSION}); upgrade train"
            )));
        }
        let json = |k: &str| serde_json::from_str(get(k)?).map_err(|e| invalid(format!("metadata `{k}`: {e}")));
        Ok(Self {
            format_version,
            position: Position {
                epoch: parse("epoch", get("epoch")?)?,
                step: parse("step", get("step")?)?,
                batches_into_epoch: parse("batches_into_epoch", get("batches_into_epoch")?)?,
                partial_loss_sum: parse("partial_loss_sum", get("partial_loss_sum")?)?,
            },
            batch_size: map.get("batch_size").map(|v| parse("batch_size", v)).transpose()?,
            train_loss: parse("train_loss", get("train_loss")?)?,
            val_loss: parse("val_loss", get("val_loss")?)?,
            val_accuracy: parse("val_accuracy", get("val_accuracy")?)?,
            has_optimizer_state: parse("has_optimizer_state", get("has_optimizer_state")?)?,
            optimizer: json("optimizer")?,
            lr_scheduler: json("lr_scheduler")?,
            rng: serde_json::from_str(get("rng")?).map_err(|e| invalid(format!("metadata `rng`: {e}")))?,
            config_sha256: get("config_sha256")?.to_string(),
            tool_version: get("tool_version")?.to_string(),
        })
    }
}

impl Meta {
    /// Metadata of a checkpoint at the start of a run, for tests of the rules that read it
    /// (here and in crates that use this one).
    #[doc(hidden)]
    pub fn sample(optimizer_kind: &str, has_optimizer_state: bool) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            position: Position::default(),
            batch_size: Some(32),
            train_loss: 1.0,
            val_loss: 1.0,
            val_accuracy: 0.5,
            has_optimizer_state,
            optimizer: serde_json::json!({ "kind": optimizer_kind }),
            lr_scheduler: serde_json::json!({}),
            rng: RngState { seed: 1, scheme: String::new() },
            config_sha256: String::new(),
            tool_version: String::new(),
        }
    }
}

/// The RNG scheme recorded for files `train` did not write.
pub const IMPORTED_RNG_SCHEME: &str = "imported";

impl Meta {
    /// Metadata for a file `train` did not write: what it records (`epoch`, `step`,
    /// `train_loss` or else `loss`, `val_loss`: numbers, or 0-d tensors read as numbers when
    /// the file was opened), and markers for the rest (no optimiser kind, an RNG scheme no
    /// run uses, so a resume from it says so).
    pub fn imported(found: &HashMap<String, String>) -> Meta {
        let get = |k: &str| found.get(k).and_then(|v| v.parse::<f64>().ok());
        Meta {
            format_version: FORMAT_VERSION,
            position: Position {
                epoch: get("epoch").map_or(0, |v| v as u32),
                step: get("step").map_or(0, |v| v as u64),
                batches_into_epoch: 0,
                partial_loss_sum: 0.0,
            },
            batch_size: None,
            // The seed guide's scripts save the epoch's training loss as `loss`.
            train_loss: get("train_loss").or_else(|| get("loss")).unwrap_or(f64::NAN),
            val_loss: get("val_loss").unwrap_or(f64::NAN),
            val_accuracy: f64::NAN,
            has_optimizer_state: false,
            optimizer: serde_json::json!({ "kind": "unknown" }),
            lr_scheduler: serde_json::json!({ "kind": "unknown" }),
            rng: RngState { seed: 0, scheme: IMPORTED_RNG_SCHEME.into() },
            config_sha256: String::new(),
            tool_version: format!("train {} (imported)", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// The checksum [`METADATA_CHECKSUM_KEY`] holds for `map` (that key itself excluded).
fn metadata_checksum(map: &HashMap<String, String>) -> String {
    let mut keys: Vec<&String> = map.keys().filter(|k| *k != METADATA_CHECKSUM_KEY).collect();
    keys.sort();
    let mut bytes = Vec::new();
    for k in keys {
        bytes.extend_from_slice(k.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(map[k].as_bytes());
        bytes.push(0);
    }
    checksum_hex(&bytes)
}

/// Whether a metadata map claims to be `train`'s: its `format`, or either of its checksum
/// keys (so a damaged `format` value reads as a damaged checkpoint of ours, not as a
/// foreign file).
pub fn claims_ours(map: &HashMap<String, String>) -> bool {
    map.get("format").map(String::as_str) == Some(FORMAT_NAME)
        || map.contains_key(METADATA_CHECKSUM_KEY)
        || map.contains_key(CHECKSUMS_KEY)
}

/// Adds the metadata checksum to a finished metadata map.
pub fn seal(mut map: HashMap<String, String>) -> HashMap<String, String> {
    let sum = metadata_checksum(&map);
    map.insert(METADATA_CHECKSUM_KEY.into(), sum);
    map
}

/// xxh3-64 of `data` as 16 lowercase hex digits.
pub fn checksum_hex(data: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_metadata_round_trips() {
        let meta = Meta::sample("adamw", true);
        assert_eq!(Meta::from_map(&seal(meta.to_map())), Ok(meta));
    }

    #[test]
    fn any_altered_value_fails_the_metadata_checksum() {
        let sealed = seal(Meta::sample("adamw", true).to_map());
        for key in sealed.keys().filter(|k| *k != METADATA_CHECKSUM_KEY) {
            let mut forged = sealed.clone();
            forged.get_mut(key).unwrap().push('9');
            assert_eq!(Meta::from_map(&forged), Err(MetaError::Corrupt), "{key}");
        }
    }

    #[test]
    fn a_version_2_map_without_its_checksum_is_refused() {
        let mut map = seal(Meta::sample("adamw", true).to_map());
        map.remove(METADATA_CHECKSUM_KEY);
        assert_eq!(Meta::from_map(&map), Err(MetaError::Corrupt));
    }

    #[test]
    fn a_version_1_claim_holding_a_version_2_key_is_refused_as_altered() {
        let mut map = Meta::sample("adamw", true).to_map();
        map.insert("format_version".into(), "1".into());
        assert!(map.contains_key("batch_size"));
        assert_eq!(Meta::from_map(&map), Err(MetaError::Corrupt));
    }

    #[test]
    fn version_1_metadata_without_a_checksum_still_reads() {
        let mut map = Meta::sample("adamw", true).to_map();
        map.insert("format_version".into(), "1".into());
        map.remove("batch_size");
        let meta = Meta::from_map(&map).unwrap();
        assert_eq!((meta.format_version, meta.batch_size), (1, None));
    }
}

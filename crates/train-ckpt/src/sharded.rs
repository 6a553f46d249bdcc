//! The index of a sharded checkpoint: what a data-parallel job with sharded state
//! (`distributed.shard`) writes instead of one file. Each rank writes its own shard file in
//! parallel, an ordinary checkpoint file of ours (plain or `.tckpt`) holding the rank's
//! pieces; rank 0 then writes this index, last, naming every shard with its size and the
//! seal of its metadata (which covers the checksum of every tensor in it), and which
//! elements of which tensor each shard holds. The checkpoint exists only once its index is
//! in place, so a rank that dies mid-save leaves the previous checkpoint as it was.
//!
//! `<stem>.index.json`, JSON, its keys in this order:
//!
//! ```text
//! {"format": "train.sharded-checkpoint", "version": 1, "world": 2,
//!  "metadata": {...},             the same sealed map a file of ours carries (epoch, losses...)
//!  "shards": [{"file": "latest.step-00000120.rank-00000-of-00002.safetensors",
//!              "bytes": 123, "seal": "<the shard's metadata_xxh3>"}, ...],
//!  "tensors": [{"name": "fc1.weight", "dtype": "F32", "shape": [32, 784],
//!               "pieces": [{"shard": 0, "offset": 0, "len": 12544}, ...]}, ...],
//!  "checksum": "<xxh3 of this JSON with checksum empty>"}
//! ```
//!
//! A piece is elements `offset .. offset + len` of the flattened tensor, stored in its shard
//! under the tensor's own name as a 1-D tensor of `len` elements (or, when it is the whole
//! tensor, in the tensor's shape). The pieces of a tensor cover it exactly once. A reader
//! treats the index as one checkpoint ([`crate::CheckpointFile`]), reading a tensor, or any
//! range of its bytes, from the shards that hold it.

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};

use crate::meta::checksum_hex;
use crate::names::{COMPRESSED_SUFFIX, PLAIN_SUFFIX};

/// The ending of an index file's name.
pub const INDEX_SUFFIX: &str = ".index.json";
/// The `format` an index declares.
pub const INDEX_FORMAT: &str = "train.sharded-checkpoint";
/// The index version this code writes and reads.
pub const INDEX_VERSION: u32 = 1;
/// An index larger than this is refused before it is read.
pub const MAX_INDEX_BYTES: u64 = 256 << 20;

/// A sharded checkpoint's index (see the module's doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// [`INDEX_FORMAT`].
    pub format: String,
    /// [`INDEX_VERSION`].
    pub version: u32,
    /// The ranks of the job that wrote it.
    pub world: u32,
    /// The checkpoint's metadata, sealed as a file of ours seals it.
    pub metadata: BTreeMap<String, String>,
    /// The shard files, by their position.
    pub shards: Vec<ShardRecord>,
    /// The tensors of the whole checkpoint, with where their pieces are.
    pub tensors: Vec<IndexTensor>,
    /// xxh3 of the index serialized with this field empty.
    pub checksum: String,
}

/// One shard file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardRecord {
    /// Its name, in the index's folder.
    pub file: String,
    /// Its size.
    pub bytes: u64,
    /// Its metadata's seal (`metadata_xxh3`).
    pub seal: String,
}

/// One tensor of the whole checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexTensor {
    /// Its name.
    pub name: String,
    /// Its dtype, by its safetensors name.
    pub dtype: Dtype,
    /// Its whole shape.
    pub shape: Vec<usize>,
    /// Its pieces, in element order.
    pub pieces: Vec<IndexPiece>,
}

/// Elements `offset .. offset + len` of a tensor, held by shard `shard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexPiece {
    /// The shard (position in [`Index::shards`]).
    pub shard: usize,
    /// First element.
    pub offset: u64,
    /// Elements.
    pub len: u64,
}

impl Index {
    /// An index of `world` ranks' `shards` holding `tensors`, with the sealed `metadata`;
    /// its checksum worked out.
    pub fn new(
        world: u32,
        metadata: HashMap<String, String>,
        shards: Vec<ShardRecord>,
        tensors: Vec<IndexTensor>,
    ) -> Self {
        let mut index = Self {
            format: INDEX_FORMAT.into(),
            version: INDEX_VERSION,
            world,
            metadata: metadata.into_iter().collect(),
            shards,
            tensors,
            checksum: String::new(),
        };
        index.checksum = index.digest();
        index
    }

    fn digest(&self) -> String {
        let mut plain = self.clone();
        plain.checksum.clear();
        checksum_hex(serde_json::to_string(&plain).expect("plain data").as_bytes())
    }

    /// The index as written.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data")
    }

    /// Parses and checks an index: its format and version, its checksum, every shard's name
    /// (a plain file name in the index's folder), and every tensor's pieces (in range, in
    /// order, covering it exactly once). The message says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let index: Index = serde_json::from_slice(bytes).map_err(|e| format!("not a valid index: {e}"))?;
        if index.format != INDEX_FORMAT {
            return Err(format!("format is {:?}, not {INDEX_FORMAT:?}", index.format));
        }
        if index.version != INDEX_VERSION {
            return Err(format!("index version {} (this version of train reads {INDEX_VERSION})", index.version));
        }
        if index.checksum != index.digest() {
            return Err("the index does not match its checksum: it was altered or damaged".into());
        }
        for s in &index.shards {
            let plain = !s.file.is_empty()
                && !s.file.contains('/')
                && !s.file.starts_with('.')
                && (s.file.ends_with(PLAIN_SUFFIX) || s.file.ends_with(COMPRESSED_SUFFIX));
            if !plain {
                return Err(format!("shard {:?} is not a checkpoint file name in the index's folder", s.file));
            }
        }
        for t in &index.tensors {
            let numel: u64 = t.shape.iter().map(|&d| d as u64).product();
            let mut at = 0;
            for p in &t.pieces {
                if p.shard >= index.shards.len() {
                    return Err(format!(
                        "tensor `{}`: a piece in shard {}, of {}",
                        t.name,
                        p.shard,
                        index.shards.len()
                    ));
                }
                if p.offset != at || p.len == 0 {
                    return Err(format!("tensor `{}`: its pieces do not follow each other at element {at}", t.name));
                }
                at += p.len;
            }
            if at != numel {
                return Err(format!("tensor `{}`: its pieces cover {at} of its {numel} elements", t.name));
            }
        }
        Ok(index)
    }

    /// Whether a file's first bytes are an index's.
    pub fn is_index(head: &[u8]) -> bool {
        let start = format!("{{\"format\":\"{INDEX_FORMAT}\"");
        head.starts_with(&start.as_bytes()[..head.len().min(start.len())]) && head.len() >= 12
    }
}

/// The name of rank `rank`'s shard of the checkpoint `stem` (`latest`, `epoch-0003`) saved
/// at step `step` by `world` ranks. Every save's shards have names of their own, so a save
/// cut short never overwrites the shards of the checkpoint still in place.
pub fn shard_file_name(stem: &str, step: u64, rank: u32, world: u32, compressed: bool) -> String {
    let suffix = if compressed { COMPRESSED_SUFFIX } else { PLAIN_SUFFIX };
    format!("{stem}.step-{step:08}.rank-{rank:05}-of-{world:05}{suffix}")
}

/// The stem of a shard file's name (`latest`, `epoch-0003`), when it is one.
pub fn shard_stem(name: &str) -> Option<&str> {
    let (stem, rest) = name.split_once(".step-")?;
    let rest = rest.strip_suffix(PLAIN_SUFFIX).or_else(|| rest.strip_suffix(COMPRESSED_SUFFIX))?;
    rest.contains(".rank-").then_some(stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Index {
        let shards = (0..2)
            .map(|r| ShardRecord { file: shard_file_name("latest", 7, r, 2, false), bytes: 100, seal: "ab".into() })
            .collect();
        let tensors = vec![IndexTensor {
            name: "w".into(),
            dtype: Dtype::F32,
            shape: vec![2, 3],
            pieces: vec![IndexPiece { shard: 0, offset: 0, len: 4 }, IndexPiece { shard: 1, offset: 4, len: 2 }],
        }];
        Index::new(2, HashMap::from([("k".to_string(), "v".to_string())]), shards, tensors)
    }

    #[test]
    fn an_index_round_trips_and_is_told_by_its_start() {
        let index = sample();
        let json = index.to_json();
        assert_eq!(Index::parse(json.as_bytes()).unwrap(), index);
        assert!(Index::is_index(&json.as_bytes()[..16]));
        assert!(!Index::is_index(b"{\"format\":\"other\"}"));
        assert_eq!(shard_stem(&index.shards[1].file), Some("latest"));
        assert_eq!(shard_stem("latest.safetensors"), None);
    }

    #[test]
    fn altered_or_ill_formed_indexes_are_refused_saying_why() {
        let json = sample().to_json();
        let altered = json.replace("\"len\":2", "\"len\":3");
        assert!(Index::parse(altered.as_bytes()).unwrap_err().contains("checksum"));
        let mut gap = sample();
        gap.tensors[0].pieces[1].offset = 5;
        let gap = Index::new(2, HashMap::new(), gap.shards, gap.tensors);
        assert!(Index::parse(gap.to_json().as_bytes()).unwrap_err().contains("do not follow"));
        let mut escape = sample();
        escape.shards[0].file = "../elsewhere.safetensors".into();
        let escape = Index::new(2, HashMap::new(), escape.shards, escape.tensors);
        assert!(Index::parse(escape.to_json().as_bytes()).unwrap_err().contains("not a checkpoint file name"));
    }
}

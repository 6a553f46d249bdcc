//! A sharded checkpoint read as one: every range of every tensor read back as the whole
//! tensor's bytes, and damage anywhere (the index, a shard, a missing shard) refused, never
//! a panic and never wrong bytes with success.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use train_ckpt::meta::{seal, METADATA_CHECKSUM_KEY};
use train_ckpt::sharded::{shard_file_name, Index, IndexPiece, IndexTensor, ShardRecord};
use train_ckpt::write::write_checkpoint;
use train_ckpt::{CheckpointFile, Meta};

/// The whole tensors: `w` (F32 [5, 7]), its `exp_avg`, and a buffer `b` (I64 [3]).
fn wholes() -> Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)> {
    let w: Vec<u8> = (0..35u32).flat_map(|i| (i as f32 * 0.25 - 3.0).to_le_bytes()).collect();
    let m: Vec<u8> = (0..35u32).flat_map(|i| (i as f32).cos().to_le_bytes()).collect();
    let b: Vec<u8> = [7i64, -1, 99].iter().flat_map(|v| v.to_le_bytes()).collect();
    vec![
        ("w", Dtype::F32, vec![5, 7], w),
        ("optimizer/w/exp_avg", Dtype::F32, vec![5, 7], m),
        ("b", Dtype::I64, vec![3], b),
    ]
}

/// Writes a 2-rank sharded checkpoint into `dir` as a job would: `w` and its state split at
/// element 18 (rank 0 plain, rank 1 compressed), `b` whole in rank 0's shard; returns the index.
fn sharded(dir: &Path) -> PathBuf {
    let meta = Meta::sample("adamw", true);
    let split = 18usize;
    let mut shards = Vec::new();
    let mut tensors: HashMap<&str, IndexTensor> = HashMap::new();
    for rank in 0..2u32 {
        let compressed = rank == 1;
        let name = shard_file_name("latest", 9, rank, 2, compressed);
        let mut held: Vec<(String, Dtype, Vec<usize>, Vec<u8>, u64, u64)> = Vec::new();
        for (t, dtype, shape, bytes) in wholes() {
            let size = dtype.bitsize() / 8;
            let numel = bytes.len() / size;
            let (lo, hi) = match (t, rank) {
                ("b", 0) => (0, numel),
                ("b", _) => continue,
                (_, 0) => (0, split),
                _ => (split, numel),
            };
            let piece_shape = if hi - lo == numel { shape.clone() } else { vec![hi - lo] };
            held.push((
                t.to_string(),
                dtype,
                piece_shape,
                bytes[lo * size..hi * size].to_vec(),
                lo as u64,
                (hi - lo) as u64,
            ));
            let whole = tensors.entry(t).or_insert(IndexTensor { name: t.into(), dtype, shape, pieces: vec![] });
            whole.pieces.push(IndexPiece { shard: rank as usize, offset: lo as u64, len: (hi - lo) as u64 });
        }
        let views: Vec<(String, TensorView)> =
            held.iter().map(|(n, d, s, b, _, _)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
        let views: Vec<(&str, &TensorView)> = views.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let path = dir.join(&name);
        let bytes = write_checkpoint(&path, &views, meta.to_map(), compressed).unwrap();
        let seal_of = CheckpointFile::open(&path).unwrap().metadata()[METADATA_CHECKSUM_KEY].clone();
        shards.push(ShardRecord { file: name, bytes, seal: seal_of });
    }
    let mut tensors: Vec<IndexTensor> = tensors.into_values().collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let index = Index::new(2, seal(meta.to_map()), shards, tensors);
    let path = dir.join("latest.index.json");
    std::fs::write(&path, index.to_json()).unwrap();
    path
}

#[test]
fn every_range_of_every_tensor_reads_as_the_whole_tensor_s_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let file = CheckpointFile::open(&sharded(dir.path())).unwrap();
    assert!(file.is_metadata_covered() && file.meta().is_some());
    assert_eq!(file.verify().unwrap().integrity, train_ckpt::Integrity::Checked);
    for (name, _, shape, bytes) in wholes() {
        assert_eq!(file.entry(name).unwrap().shape, shape);
        assert_eq!(file.read(name).unwrap(), bytes, "{name}");
        for start in 0..=bytes.len() {
            for end in start..=bytes.len() {
                let mut out = vec![0u8; end - start];
                file.read_range_into(name, start as u64, &mut out).unwrap();
                assert_eq!(out, bytes[start..end], "{name} bytes {start}..{end}");
            }
        }
        let mut past = vec![0u8; 2];
        assert!(file.read_range_into(name, bytes.len() as u64 - 1, &mut past).is_err(), "{name}: a range past the end");
    }
}

#[test]
fn damage_to_the_index_or_a_shard_is_refused_never_read_as_data() {
    let dir = tempfile::tempdir().unwrap();
    let index = sharded(dir.path());
    let pristine: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    let expected: Vec<Vec<u8>> = wholes().into_iter().map(|(_, _, _, b)| b).collect();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    for case in 0..600 {
        let (path, original) = &pristine[case % pristine.len()];
        let mut damaged = original.clone();
        match next(3) {
            0 => {
                let at = next(damaged.len());
                damaged[at] ^= 1 << next(8);
            }
            1 => damaged.truncate(next(damaged.len())),
            _ => {
                let at = next(damaged.len());
                damaged[at] = damaged[next(damaged.len())];
            }
        }
        if damaged == *original {
            continue;
        }
        std::fs::write(path, &damaged).unwrap();
        let outcome = std::panic::catch_unwind(|| {
            let file = CheckpointFile::open(&index)?;
            file.verify()?;
            wholes().into_iter().map(|(n, ..)| file.read(n)).collect::<Result<Vec<_>, _>>()
        });
        match outcome {
            Err(_) => panic!("case {case}: {} damaged made the reader panic", path.display()),
            Ok(Ok(read)) => assert_eq!(read, expected, "case {case}: damage in {} read as data", path.display()),
            Ok(Err(_)) => {}
        }
        std::fs::write(path, original).unwrap();
    }
    // A shard gone: refused, naming it.
    let shard = &pristine.iter().find(|(p, _)| p.to_string_lossy().contains("rank-00001")).unwrap().0;
    std::fs::remove_file(shard).unwrap();
    let err = CheckpointFile::open(&index).err().expect("a missing shard is refused").to_string();
    assert!(err.contains("rank-00001") && err.contains("missing"), "{err}");
}

/// An index whose shard is itself an index (or names itself) is refused, not followed.
#[test]
fn an_index_naming_an_index_as_its_shard_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let index = sharded(dir.path());
    let json = std::fs::read(&index).unwrap();
    // Rank 0's shard replaced by the index itself, under the shard's name.
    let shard = dir.path().join(shard_file_name("latest", 9, 0, 2, false));
    std::fs::write(&shard, &json).unwrap();
    let err = CheckpointFile::open(&index).err().expect("refused").to_string();
    assert!(err.contains("not be another sharded checkpoint's index"), "{err}");
}

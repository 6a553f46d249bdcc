//! Python opens what `train` writes: plain checkpoints are safetensors files that
//! `safetensors` and `torch` read, with the run's metadata and PyTorch parameter names.

mod common;

use sha2::{Digest, Sha256};
use train::checkpoint::CheckpointFile;

#[test]
fn python_opens_a_checkpoint_and_loads_it_into_a_torch_module() {
    let ws = tempfile::tempdir().unwrap();
    common::make_dataset(&ws.path().join("data"), 256, 64);
    let mut cmd = common::train(ws.path());
    cmd.args(["--experiment", "standard", "--set", "training.epochs=1"]);
    common::with_sets(&mut cmd, &common::quick_sets(&ws.path().join("data"))).assert().success();
    let path = ws.path().join("runs/standard/checkpoints/latest.safetensors");

    let out =
        common::run_python(&common::repo().join("tests/reference/open_checkpoint.py"), &[path.to_str().unwrap(), "32"]);
    let seen: serde_json::Value = serde_json::from_str(&out).unwrap();
    let meta = &seen["metadata"];
    assert_eq!(meta["format"], "train.checkpoint");
    assert_eq!(meta["epoch"], "1");
    assert_eq!(meta["step"], "8");
    assert_eq!(meta["has_optimizer_state"], "true");
    for key in ["train_loss", "val_loss", "config_sha256", "optimizer", "rng", "tool_version"] {
        assert!(meta.get(key).is_some(), "metadata lacks {key}");
    }
    assert_eq!(seen["logits_finite"], true);

    // Python sees the same tensors, to the bit.
    let file = CheckpointFile::open(&path).unwrap();
    let theirs = seen["tensors"].as_object().unwrap();
    assert_eq!(file.entries().len(), theirs.len());
    for e in file.entries() {
        let sha: String = Sha256::digest(file.read(&e.name).unwrap()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(theirs[&e.name]["sha256"], sha.as_str(), "{}", e.name);
        assert_eq!(theirs[&e.name]["shape"], serde_json::json!(e.shape), "{}", e.name);
    }
}

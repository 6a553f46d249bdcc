//! End-to-end CPU runs through the real binary: the files a run writes, what each
//! checkpoint holds, and resuming.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use train::checkpoint::{CheckpointFile, OPTIMIZER_PREFIX};
use train::metrics::MetricsLog;

/// A folder with a small generated data set under `data/`.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(&dir.path().join("data"), 512, 128);
    dir
}

fn run(cwd: &Path, args: &[&str], sets: &[String]) -> String {
    let mut cmd = common::train(cwd);
    cmd.args(args);
    let mut all = common::quick_sets(&cwd.join("data"));
    all.extend_from_slice(sets);
    let out = common::with_sets(&mut cmd, &all).assert().success().get_output().clone();
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Every tensor of a checkpoint as raw bytes, by name.
fn tensor_bytes(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let file = CheckpointFile::open(path).unwrap();
    file.names().into_iter().map(|n| (n.to_string(), file.read(n).unwrap())).collect()
}

fn optimizer_tensors(path: &Path) -> usize {
    tensor_bytes(path).keys().filter(|k| k.starts_with(OPTIMIZER_PREFIX)).count()
}

#[test]
fn two_epoch_run_writes_exactly_the_promised_files() {
    let ws = workspace();
    let log = run(ws.path(), &["--experiment", "balanced"], &["training.epochs=2".into()]);
    let out = ws.path().join("runs/balanced");
    assert_eq!(
        common::files_under(&out),
        [
            "checkpoints/epoch-0001.safetensors",
            "checkpoints/epoch-0002.safetensors",
            "checkpoints/latest.safetensors",
            "config.yaml",
            "metrics.jsonl"
        ]
    );
    // balanced: optimizer state only in `latest`
    let ckpt = out.join("checkpoints");
    assert_eq!(optimizer_tensors(&ckpt.join("epoch-0001.safetensors")), 0);
    assert_eq!(optimizer_tensors(&ckpt.join("epoch-0002.safetensors")), 0);
    // AdamW: step, exp_avg, exp_avg_sq for each of the 4 parameters
    assert_eq!(optimizer_tensors(&ckpt.join("latest.safetensors")), 12);

    let latest = CheckpointFile::open(&ckpt.join("latest.safetensors")).unwrap();
    let meta = latest.meta().unwrap();
    assert_eq!((meta.epoch(), meta.step()), (2, 2 * 512 / 32));
    assert!(meta.has_optimizer_state && meta.train_loss.is_finite() && meta.val_loss.is_finite());
    assert_eq!(meta.optimizer["kind"], "adamw");
    assert!(!CheckpointFile::open(&ckpt.join("epoch-0001.safetensors")).unwrap().meta().unwrap().has_optimizer_state);

    let metrics = MetricsLog::read(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.iter().map(|m| m.epoch).collect::<Vec<_>>(), [1, 2]);
    assert!(metrics[1].train_loss < metrics[0].train_loss, "the model learns: {metrics:?}");

    let config: train::config::Config =
        serde_yaml::from_str(&std::fs::read_to_string(out.join("config.yaml")).unwrap()).unwrap();
    assert_eq!(config.training.epochs, 2);
    assert!(log.contains("checkpoint saved") && log.contains("starting fresh"), "{log}");
}

#[test]
fn standard_keeps_optimizer_state_in_every_checkpoint() {
    let ws = workspace();
    run(ws.path(), &["--experiment", "standard"], &["training.epochs=1".into()]);
    let ckpt = ws.path().join("runs/standard/checkpoints");
    assert_eq!(optimizer_tensors(&ckpt.join("epoch-0001.safetensors")), 12);
}

#[test]
fn resume_matches_uninterrupted_run() {
    let ws = workspace();
    let dir = |name: &str| ws.path().join(name).display().to_string();
    for optimizer in ["adamw", "sgd"] {
        let kind = format!("training.optimizer.kind={optimizer}");
        run(
            ws.path(),
            &["--experiment", "standard", "--output-dir", &dir(&format!("a-{optimizer}"))],
            &["training.epochs=4".into(), kind.clone()],
        );
        let b = dir(&format!("b-{optimizer}"));
        run(ws.path(), &["--experiment", "standard", "--output-dir", &b], &["training.epochs=2".into(), kind.clone()]);
        let log = run(
            ws.path(),
            &["--experiment", "standard", "--output-dir", &b, "--resume", "auto"],
            &["training.epochs=4".into(), kind],
        );
        assert!(log.contains("resumed") && log.contains("epoch=2"), "{log}");

        let a = tensor_bytes(&ws.path().join(format!("a-{optimizer}/checkpoints/latest.safetensors")));
        let b = tensor_bytes(&ws.path().join(format!("b-{optimizer}/checkpoints/latest.safetensors")));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (name, bytes) in &a {
            assert!(bytes == &b[name], "{optimizer}: tensor `{name}` differs after resume");
        }
        let metrics = MetricsLog::read(&ws.path().join(format!("b-{optimizer}/metrics.jsonl"))).unwrap();
        assert_eq!(metrics.iter().map(|m| m.epoch).collect::<Vec<_>>(), [1, 2, 3, 4]);
    }
}

#[test]
fn ultra_low_memory_compresses_and_resumes_with_a_fresh_optimizer() {
    let ws = workspace();
    run(ws.path(), &["--experiment", "ultra_low_memory"], &["training.epochs=1".into()]);
    let ckpt = ws.path().join("runs/ultra_low_memory/checkpoints");
    assert_eq!(common::files_under(&ckpt), ["epoch-0001.tckpt", "latest.tckpt"]);
    assert_eq!(optimizer_tensors(&ckpt.join("latest.tckpt")), 12);
    let log = run(ws.path(), &["--experiment", "ultra_low_memory"], &["training.epochs=2".into()]);
    assert!(log.contains("the optimizer starts fresh (memory.load_optimizer_state is false)"), "{log}");
    assert!(log.contains("resumed"), "{log}");
    assert_eq!(CheckpointFile::open(&ckpt.join("latest.tckpt")).unwrap().meta().unwrap().epoch(), 2);
}

#[test]
fn resume_never_refuses_to_overwrite_an_earlier_run() {
    let ws = workspace();
    run(ws.path(), &["--experiment", "balanced"], &["training.epochs=1".into()]);
    let latest = ws.path().join("runs/balanced/checkpoints/latest.safetensors");
    let before = std::fs::read(&latest).unwrap();
    let mut cmd = common::train(ws.path());
    cmd.args(["--experiment", "balanced", "--resume", "never"]);
    common::with_sets(&mut cmd, &common::quick_sets(&ws.path().join("data")))
        .assert()
        .code(2)
        .stderr(predicates::str::contains("already holds checkpoints").and(predicates::str::contains("--resume auto")));
    assert_eq!(std::fs::read(&latest).unwrap(), before);
}

#[test]
fn a_corrupt_latest_is_skipped_for_the_newest_good_checkpoint() {
    let ws = workspace();
    run(ws.path(), &["--experiment", "standard"], &["training.epochs=2".into()]);
    let latest = ws.path().join("runs/standard/checkpoints/latest.safetensors");
    let bytes = std::fs::read(&latest).unwrap();
    std::fs::write(&latest, &bytes[..bytes.len() / 2]).unwrap();
    let log = run(ws.path(), &["--experiment", "standard"], &["training.epochs=3".into()]);
    assert!(log.contains("skipping unreadable checkpoint") || log.contains("cannot resume from"), "{log}");
    assert!(log.contains("epoch-0002.safetensors") && log.contains("resumed"), "{log}");
    assert_eq!(CheckpointFile::open(&latest).unwrap().meta().unwrap().epoch(), 3);
}

#[test]
fn a_finished_run_is_left_as_it_is() {
    let ws = workspace();
    run(ws.path(), &["--experiment", "balanced"], &["training.epochs=1".into()]);
    let out = ws.path().join("runs/balanced");
    let latest = std::fs::read(out.join("checkpoints/latest.safetensors")).unwrap();
    let log = run(ws.path(), &["--experiment", "balanced"], &["training.epochs=1".into()]);
    assert!(log.contains("already complete"), "{log}");
    assert_eq!(std::fs::read(out.join("checkpoints/latest.safetensors")).unwrap(), latest);
    assert_eq!(MetricsLog::read(&out.join("metrics.jsonl")).unwrap().len(), 1);
}

#[test]
fn dry_run_writes_nothing() {
    let ws = workspace();
    let log = run(ws.path(), &["--experiment", "balanced", "--dry-run"], &[]);
    assert!(log.contains("dry run"), "{log}");
    assert!(!ws.path().join("runs").exists());
}

#[test]
fn resume_from_an_explicit_path_with_a_wrong_model_names_the_tensor() {
    let ws = workspace();
    run(ws.path(), &["--experiment", "standard"], &["training.epochs=1".into()]);
    let ckpt = ws.path().join("runs/standard/checkpoints/epoch-0001.safetensors");
    let mut cmd = common::train(ws.path());
    cmd.args(["--experiment", "standard", "--output-dir", "other", "--resume", ckpt.to_str().unwrap()]);
    let mut sets = common::quick_sets(&ws.path().join("data"));
    sets.push("model.mlp.hidden=[16]".into());
    common::with_sets(&mut cmd, &sets).assert().code(2).stderr(
        predicates::str::contains("tensor `fc1.bias`").and(predicates::str::contains("epoch-0001.safetensors")),
    );
    assert!(!ws.path().join("other").exists());
}

use predicates::prelude::PredicateBooleanExt;

/// Regression (hardening report): resuming a mid-epoch checkpoint with a larger batch size
/// panicked ("range start index 10 out of range"), on every retry. Now the position is
/// checked first: exit 2, naming the batch size it was saved with; an epoch checkpoint
/// resumes with any batch size.
#[test]
fn a_mid_epoch_checkpoint_refuses_another_batch_size_with_advice() {
    let ws = workspace();
    let d = ws.path();
    // 512 examples in batches of 32: 16 a step; stop after 10 steps, 10 batches in.
    run(d, &["--output-dir", "r"], &["training.max_steps=10".into()]);
    let mut cmd = common::train(d);
    cmd.args(["--output-dir", "r"]);
    let mut sets = common::quick_sets(&d.join("data"));
    sets.push("training.batch_size=128".into());
    let out = common::with_sets(&mut cmd, &sets).assert().code(2).get_output().clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("training.batch_size=32") && !stderr.contains("panicked"), "{stderr}");
    // The same batch size resumes.
    run(d, &["--output-dir", "r"], &["training.epochs=1".into()]);
}

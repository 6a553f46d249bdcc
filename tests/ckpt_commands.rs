//! `train ckpt inspect | verify | convert | strip`, on files written by `train` and by Python
//! (tests/reference/make_pytorch_checkpoints.py).

mod common;

use std::collections::HashMap;
use std::path::Path;

use predicates::prelude::*;
use sha2::{Digest, Sha256};
use train::checkpoint::CheckpointFile;

fn python_files() -> (tempfile::TempDir, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    common::run_python(
        &common::repo().join("tests/reference/make_pytorch_checkpoints.py"),
        &[dir.path().to_str().unwrap()],
    );
    let expected = serde_json::from_str(&std::fs::read_to_string(dir.path().join("expected.json")).unwrap()).unwrap();
    (dir, expected)
}

fn sha256s(path: &Path) -> HashMap<String, String> {
    let ckpt = CheckpointFile::open(path).unwrap();
    ckpt.entries()
        .iter()
        .map(|e| {
            (e.name.clone(), Sha256::digest(ckpt.read(&e.name).unwrap()).iter().map(|b| format!("{b:02x}")).collect())
        })
        .collect()
}

fn ckpt(dir: &Path, args: &[&str]) -> assert_cmd::assert::Assert {
    common::train(dir).arg("ckpt").args(args).assert()
}

fn assert_same(found: &HashMap<String, String>, expected: &serde_json::Value) {
    let expected = expected.as_object().unwrap();
    assert_eq!(found.len(), expected.len(), "{found:?}");
    for (name, sha) in expected {
        assert_eq!(found.get(name).map(String::as_str), sha.as_str(), "{name}");
    }
}

#[test]
fn every_dtype_round_trips_bit_for_bit_through_every_writable_format() {
    let (dir, expected) = python_files();
    let d = dir.path();
    ckpt(d, &["convert", "dtypes.safetensors", "a.tckpt"]).success();
    ckpt(d, &["convert", "a.tckpt", "b.safetensors"]).success();
    ckpt(d, &["verify", "a.tckpt"]).success();
    ckpt(d, &["verify", "b.safetensors"]).success();
    assert_same(&sha256s(&d.join("a.tckpt")), &expected["dtypes"]);
    assert_same(&sha256s(&d.join("b.safetensors")), &expected["dtypes"]);
}

#[test]
fn a_seed_guide_pth_converts_tensor_for_tensor_and_resumes() {
    let (dir, expected) = python_files();
    let d = dir.path();
    ckpt(d, &["convert", "guide.pth", "guide.safetensors"])
        .success()
        .stderr(predicate::str::contains("optimizer will start fresh").and(predicate::str::contains("parameters=4")));
    ckpt(d, &["convert", "state_dict.pt", "plain.safetensors"]).success();
    assert_same(&sha256s(&d.join("guide.safetensors")), &expected["model"]);
    assert_same(&sha256s(&d.join("plain.safetensors")), &expected["model"]);

    let out = ckpt(d, &["inspect", "--json", "guide.safetensors"]).success().get_output().stdout.clone();
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["epoch"], 3);
    assert_eq!(report["train_loss"], 0.5);
    assert_eq!(report["val_loss"], 0.625);
    assert_eq!(report["has_optimizer_state"], false);
    assert_eq!(report["train_checkpoint"], true);

    // The imported weights continue training in `train`, from epoch 3.
    common::make_dataset(&d.join("data"), 128, 32);
    let mut cmd = common::train(d);
    cmd.args(["--experiment", "balanced", "--resume", "guide.safetensors", "--set", "training.epochs=4"]);
    common::with_sets(&mut cmd, &common::quick_sets(&d.join("data")))
        .assert()
        .success()
        .stderr(predicate::str::contains("holds no optimizer state").and(predicate::str::contains("epoch=3")));
}

#[test]
fn resuming_a_seed_guide_pth_keeps_its_adam_moments() {
    let (dir, _) = python_files();
    let d = dir.path();
    common::make_dataset(&d.join("data"), 128, 32);
    // One step resumed from guide.pth into `out` with optimizer `kind`; returns stderr.
    // (The global step continues at the file's 2, so the run's third step is its one step.)
    let resume = |out: &str, kind: &str| {
        let mut cmd = common::train(d);
        cmd.args(["--resume", "guide.pth", "--output-dir", out]);
        let kind = format!("training.optimizer.kind={kind}");
        common::with_sets(&mut cmd, &[kind.as_str(), "training.epochs=4", "training.max_steps=3"]);
        let out =
            common::with_sets(&mut cmd, &common::quick_sets(&d.join("data"))).assert().success().get_output().clone();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // guide.pth holds an Adam state after 2 steps for fc1/out, keyed by parameter index.
    let log = resume("r", "adam");
    assert!(log.contains("imported the PyTorch optimizer state") && log.contains("parameters=4"), "{log}");
    // Regression (issue 17, item 3): the global step restarted at 0, so the schedule warmed
    // up again while Adam's step went on. Both continue from the file's 2.
    assert!(log.contains("continues at global step 2, from the optimizer state's `step`"), "{log}");
    assert!(log.contains("tensors=12") && !log.contains("optimizer and schedule start fresh"), "{log}");
    // One more step on top of the imported two: PyTorch's step counts carried over.
    let latest = train::checkpoint::CheckpointFile::open(&d.join("r/checkpoints/latest.safetensors")).unwrap();
    for p in ["fc1.weight", "fc1.bias", "out.weight", "out.bias"] {
        let step = latest.read(&format!("optimizer/{p}/step")).unwrap();
        assert_eq!(i64::from_le_bytes(step[..8].try_into().unwrap()), 3, "{p}");
    }
    assert_eq!(latest.meta().unwrap().step(), 3, "the run's global step is Adam's");
    // An optimizer that keeps other state (SGD's momentum) cannot take Adam's: fresh, said.
    let log = resume("s", "sgd");
    assert!(log.contains("cannot import the file's optimizer state") && log.contains("exp_avg"), "{log}");
}

/// Regression (issue 17, items 7 and 9): a DistributedDataParallel run's `.pth`, whose
/// names carry `module.`, was refused by `--resume` (while `--init-from` dropped its
/// optimizer); and a weights file that lacks a tensor was refused without a word about
/// `--init-from`.
#[test]
fn resume_strips_a_wrapper_prefix_and_points_weights_files_to_init_from() {
    let (dir, _) = python_files();
    let d = dir.path();
    common::make_dataset(&d.join("data"), 128, 32);
    let resume = |file: &str, out: &str| {
        let mut cmd = common::train(d);
        cmd.args(["--resume", file, "--output-dir", out]);
        common::with_sets(&mut cmd, &["training.optimizer.kind=adam", "training.epochs=4", "training.max_steps=3"]);
        common::with_sets(&mut cmd, &common::quick_sets(&d.join("data"))).assert()
    };
    let out = resume("ddp.pth", "ddp").success().get_output().clone();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("wrapper prefix `module.`") && log.contains("parameters=4"), "{log}");
    let latest = CheckpointFile::open(&d.join("ddp/checkpoints/latest.safetensors")).unwrap();
    assert_eq!(latest.read("optimizer/out.bias/step").unwrap()[..8], 3i64.to_le_bytes(), "Adam's moments kept");

    resume("absent.pth", "absent").code(2).stderr(predicate::str::contains("absent.pth"));
    // Exit 2 (issue 17, item 10): a file that does not fit the model is the command's fault.
    resume("partial.pt", "partial")
        .code(2)
        .stderr(predicate::str::contains("has no tensor `out.bias`").and(predicate::str::contains("use --init-from")));
}

#[test]
fn inspect_reports_stable_fields() {
    let ws = tempfile::tempdir().unwrap();
    common::make_dataset(&ws.path().join("data"), 128, 32);
    let mut cmd = common::train(ws.path());
    cmd.args(["--experiment", "ultra_low_memory", "--set", "training.epochs=1"]);
    common::with_sets(&mut cmd, &common::quick_sets(&ws.path().join("data"))).assert().success();
    let path = "runs/ultra_low_memory/checkpoints/latest.tckpt";
    let out = ckpt(ws.path(), &["inspect", "--json", path]).success().get_output().stdout.clone();
    let r: serde_json::Value = serde_json::from_slice(&out).unwrap();
    for key in [
        "path",
        "format",
        "compressed",
        "train_checkpoint",
        "format_version",
        "epoch",
        "step",
        "train_loss",
        "val_loss",
        "tensors",
        "model_bytes",
        "optimizer_bytes",
        "largest_tensor_bytes",
        "has_optimizer_state",
        "file_bytes",
        "compression_ratio",
    ] {
        assert!(r.get(key).is_some(), "inspect lacks `{key}`: {r}");
    }
    assert_eq!(r["compressed"], true);
    assert_eq!(r["epoch"], 1);
    assert_eq!(r["has_optimizer_state"], true);
    // AdamW: two moments of the weights' size, plus one int64 step per parameter.
    assert_eq!(r["optimizer_bytes"].as_u64().unwrap(), 2 * r["model_bytes"].as_u64().unwrap() + 4 * 8);
    ckpt(ws.path(), &["inspect", path]).success().stdout(predicate::str::contains("has_optimizer_state  true"));
}

#[test]
fn strip_drops_optimizer_state_and_keeps_weights() {
    let (dir, _) = python_files();
    let d = dir.path();
    let ws = tempfile::tempdir().unwrap();
    common::make_dataset(&ws.path().join("data"), 128, 32);
    let mut cmd = common::train(ws.path());
    cmd.args(["--experiment", "standard", "--set", "training.epochs=1"]);
    common::with_sets(&mut cmd, &common::quick_sets(&ws.path().join("data"))).assert().success();
    let latest = ws.path().join("runs/standard/checkpoints/latest.safetensors");
    let stripped = d.join("weights.safetensors");
    ckpt(d, &["strip", latest.to_str().unwrap(), "-o", "weights.safetensors"]).success();
    let before = sha256s(&latest);
    let after = sha256s(&stripped);
    assert_eq!(after.len(), 4);
    for (name, sha) in &after {
        assert_eq!(&before[name], sha, "{name}");
    }
    assert!(!CheckpointFile::open(&stripped).unwrap().meta().unwrap().has_optimizer_state);
    // In place.
    ckpt(ws.path(), &["strip", latest.to_str().unwrap()]).success();
    assert_eq!(sha256s(&latest), after);
}

#[test]
fn verify_fails_on_damage_and_bad_input_names_the_file() {
    let (dir, _) = python_files();
    let d = dir.path();
    ckpt(d, &["convert", "dtypes.safetensors", "ours.safetensors"]).success();
    let mut bytes = std::fs::read(d.join("ours.safetensors")).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 1;
    std::fs::write(d.join("flipped.safetensors"), &bytes).unwrap();
    std::fs::write(d.join("torn.safetensors"), &bytes[..n / 2]).unwrap();
    ckpt(d, &["verify", "flipped.safetensors"]).code(1).stderr(predicate::str::contains("fails its checksum"));
    ckpt(d, &["verify", "torn.safetensors"]).code(1).stderr(predicate::str::contains("torn.safetensors"));
    ckpt(d, &["verify", "missing.safetensors"]).code(1).stderr(predicate::str::contains("missing.safetensors"));
    ckpt(d, &["convert", "ours.safetensors", "out.pt"]).code(1).stderr(
        predicate::str::contains("cannot write checkpoint out.pt").and(predicate::str::contains("not supported")),
    );
    std::fs::write(d.join("notes.txt"), "not a checkpoint").unwrap();
    ckpt(d, &["inspect", "notes.txt"]).code(1).stderr(predicate::str::contains("unknown checkpoint format"));
    ckpt(d, &["inspect", "absent.txt"]).code(1).stderr(predicate::str::contains("absent.txt: No such file"));
    // A header claiming an absurd length is refused without allocating it.
    let mut huge = (u64::MAX / 2).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    std::fs::write(d.join("huge.safetensors"), huge).unwrap();
    ckpt(d, &["verify", "huge.safetensors"]).code(1).stderr(predicate::str::contains("huge.safetensors"));
    assert!(!d.join("out.pt").exists());
}

/// Regression (hardening report): `ckpt verify`/`convert` re-parsed the whole header for
/// every tensor, so 1k/4k/16k tensors took 1.1/21.5/297 s. One reader parses it once.
#[test]
fn verify_and_convert_are_linear_in_the_tensor_count() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data: Vec<Vec<u8>> = (0..16_384u32).map(|i| i.to_le_bytes().repeat(4)).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .enumerate()
        .map(|(i, b)| {
            (
                format!("layer{i}.weight"),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], b).unwrap(),
            )
        })
        .collect();
    std::fs::write(d.join("many.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    for args in [
        &["verify", "many.safetensors"][..],
        &["convert", "many.safetensors", "ours.safetensors"],
        &["verify", "ours.safetensors"],
        &["convert", "ours.safetensors", "ours.tckpt"],
        &["verify", "ours.tckpt"],
    ] {
        let start = std::time::Instant::now();
        ckpt(d, args).success();
        let seconds = start.elapsed().as_secs_f64();
        eprintln!("{args:?} on 16384 tensors: {seconds:.2} s");
        assert!(seconds < 20.0, "{args:?} took {seconds:.1} s");
    }
}

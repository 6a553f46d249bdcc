//! What `train` says agrees with what it did, and leaves out what does not apply (issue 17,
//! items 4, 12 and 13).

mod common;

use std::path::Path;

use train::metrics::MetricsLog;

/// A regression set: `x` [96, 4] float32, `y` [96, 1] float32 (a linear function of `x`).
fn regression_set(path: &Path) {
    let x: Vec<f32> = (0..96 * 4).map(|i| ((i * 37 % 101) as f32) / 101.0).collect();
    let y: Vec<f32> = x.chunks(4).map(|r| r[0] - 2.0 * r[1] + 0.5 * r[3]).collect();
    let bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    let (xb, yb) = (bytes(&x), bytes(&y));
    let views = [
        ("x", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![96, 4], &xb).unwrap()),
        ("y", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![96, 1], &yb).unwrap()),
    ];
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn regression_run(d: &Path) -> String {
    regression_set(&d.join("reg.safetensors"));
    let mut cmd = common::train(d);
    cmd.args(["--output-dir", "reg"]);
    common::with_sets(
        &mut cmd,
        &[
            "run.device=cpu",
            "data.kind=tensors",
            "data.path=reg.safetensors",
            "training.epochs=1",
            "training.batch_size=16",
        ],
    );
    let out = cmd.assert().success().get_output().clone();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Regression (issue 17, items 4 and 12): a regression run's text log showed
/// `val_accuracy=NaN`, and a run on a file logged `dir=/usr/share/datasets/fashion-mnist`,
/// a key it does not use.
#[test]
fn a_regression_run_on_a_file_logs_neither_accuracy_nor_an_unused_data_dir() {
    let ws = tempfile::tempdir().unwrap();
    let log = regression_run(ws.path());
    let epoch = log.lines().find(|l| l.contains("epoch done")).unwrap_or_else(|| panic!("{log}"));
    assert!(epoch.contains("val_loss=") && !epoch.contains("val_accuracy"), "{epoch}");
    let loaded = log.lines().find(|l| l.contains("data loaded")).unwrap();
    assert!(loaded.contains("from=reg.safetensors") && !loaded.contains("dir="), "{loaded}");
}

/// Regression (issue 17, item 13): `train eval --checkpoint X` without `--config` failed on
/// settings it did not have; a checkpoint in a run folder brings that folder's.
#[test]
fn eval_without_a_config_uses_the_run_folders_own() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    regression_run(d);
    let out = common::train(d)
        .args(["eval", "--checkpoint", "reg/checkpoints/latest.safetensors", "--json"])
        .assert()
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("reg/config.yaml"), "says which configuration: {stderr}");
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let logged = MetricsLog::read(&d.join("reg/metrics.jsonl")).unwrap()[0].val_loss;
    assert!((e["loss"].as_f64().unwrap() - logged).abs() < 1e-6, "{e} vs {logged}");
    assert!(e["accuracy"].is_null(), "{e}");
}

/// `train` colours its logs as `train-ckpt` does (issue 17, item 12): never into a pipe
/// unless `CLICOLOR_FORCE` asks, and never when `NO_COLOR` is set.
#[test]
fn logs_carry_colour_codes_only_when_asked() {
    let ws = tempfile::tempdir().unwrap();
    regression_set(&ws.path().join("reg.safetensors"));
    let log = |env: &[(&str, &str)]| {
        let mut cmd = common::train(ws.path());
        cmd.env_remove("NO_COLOR").env_remove("CLICOLOR_FORCE").envs(env.iter().copied());
        cmd.args(["--dry-run", "--output-dir", "dry"]);
        common::with_sets(&mut cmd, &["run.device=cpu", "data.kind=tensors", "data.path=reg.safetensors"]);
        let out = cmd.assert().success().get_output().clone();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(!log(&[]).contains("\x1b["), "a pipe gets plain text");
    assert!(log(&[("CLICOLOR_FORCE", "1")]).contains("\x1b["), "forced colour shows, so the check can fail");
    assert!(!log(&[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")]).contains("\x1b["));
}

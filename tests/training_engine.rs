//! The training engine through the real binary: each model learns, gradient accumulation
//! equals one large batch, mid-epoch checkpoints resume exactly, a TorchScript module trains.

mod common;

use std::path::Path;

use train::checkpoint::CheckpointFile;
use train::metrics::{MetricsLine, MetricsLog};

fn run(cwd: &Path, out: &str, sets: &[&str]) -> String {
    let mut cmd = common::train(cwd);
    cmd.args(["--output-dir", out, "--set", "run.device=cpu"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let o = cmd.assert().success().get_output().clone();
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn epochs(dir: &Path) -> Vec<train::metrics::EpochMetrics> {
    MetricsLog::read(&dir.join("metrics.jsonl")).unwrap()
}

fn write_text(path: &Path) {
    // A small language with structure to learn: repeated words in varying order.
    let words = ["alpha ", "beta ", "gamma ", "delta ", "epsilon\n"];
    let mut state = 7u32;
    let mut text = String::new();
    while text.len() < 40_000 {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        text.push_str(words[(state >> 16) as usize % words.len()]);
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn each_model_learns() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    common::make_dataset(&d.join("data"), 512, 128);
    let data = format!("data.dir={}", d.join("data").display());
    for (out, model) in [("mlp", "model.kind=mlp"), ("cnn", "model.kind=cnn")] {
        run(d, out, &[&data, model, "training.epochs=3", "training.batch_size=32", "model.cnn.channels=[8, 16]"]);
        let m = epochs(&d.join(out));
        assert!(m[2].train_loss < 0.5 * m[0].train_loss, "{model}: {m:?}");
        assert!(m[2].val_accuracy > 0.9, "{model}: {m:?}");
    }
    write_text(&d.join("text.txt"));
    let text = format!("data.path={}", d.join("text.txt").display());
    run(
        d,
        "gpt",
        &[
            "model.kind=gpt",
            "data.kind=text",
            &text,
            "training.epochs=3",
            "training.batch_size=16",
            "training.optimizer.lr=3e-3",
        ],
    );
    let m = epochs(&d.join("gpt"));
    // From ln(256) = 5.5 nats for a uniform guess to well under 2 on this simple text.
    assert!(m[2].val_loss < 2.0, "gpt: {m:?}");
}

#[test]
fn accumulated_micro_batches_equal_one_large_batch() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    common::make_dataset(&d.join("data"), 256, 64);
    let data = format!("data.dir={}", d.join("data").display());
    let base = [data.as_str(), "training.epochs=2", "training.batch_size=64", "model.mlp.hidden=[32]"];
    run(d, "one", &base);
    run(d, "four", &[&base[..], &["training.grad_accum_steps=4"]].concat());
    let a = CheckpointFile::open(&d.join("one/checkpoints/latest.safetensors")).unwrap();
    let b = CheckpointFile::open(&d.join("four/checkpoints/latest.safetensors")).unwrap();
    for name in a.names() {
        if name.ends_with("/step") {
            continue;
        }
        let f = |file: &CheckpointFile| -> Vec<f32> {
            file.read(name).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
        };
        let (x, y) = (f(&a), f(&b));
        let worst = x.iter().zip(&y).map(|(p, q)| (p - q).abs() / (1e-3 + p.abs())).fold(0f32, f32::max);
        assert!(worst < 1e-3, "{name}: relative difference {worst} after 2 epochs");
    }
}

#[test]
fn a_mid_epoch_checkpoint_resumes_exactly() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    common::make_dataset(&d.join("data"), 512, 64);
    let data = format!("data.dir={}", d.join("data").display());
    // 16 steps an epoch; the schedule makes every step's learning rate different.
    let base = [
        data.as_str(),
        "training.batch_size=32",
        "model.mlp.hidden=[32]",
        "training.epochs=3",
        "training.schedule.kind=cosine",
        "training.schedule.warmup_steps=4",
        "checkpoint.every_n_steps=5",
        "training.log_every_n_steps=5",
    ];
    run(d, "full", &base);
    // Stop inside epoch 2 (step 21 = epoch 1 + 5 batches), then continue.
    run(d, "cut", &[&base[..], &["training.max_steps=21"]].concat());
    let latest = d.join("cut/checkpoints/latest.safetensors");
    let meta = CheckpointFile::open(&latest).unwrap().meta().unwrap().clone();
    assert_eq!((meta.epoch(), meta.position.batches_into_epoch, meta.step()), (1, 5, 21));
    let resumed = run(d, "cut", &base);
    assert!(resumed.contains("resumed"), "{resumed}");
    let a = CheckpointFile::open(&d.join("full/checkpoints/latest.safetensors")).unwrap();
    let b = CheckpointFile::open(&latest).unwrap();
    for name in a.names() {
        assert!(a.read(name).unwrap() == b.read(name).unwrap(), "{name} differs");
    }
    // Every step line once, none repeated by the resume.
    let steps: Vec<u64> = MetricsLog::read_all(&d.join("cut/metrics.jsonl"))
        .unwrap()
        .iter()
        .filter_map(|l| match l {
            MetricsLine::Step(s) => Some(s.step),
            MetricsLine::Epoch(_) | MetricsLine::Event(_) => None,
        })
        .collect();
    assert_eq!(steps, [5, 10, 15, 20, 25, 30, 35, 40, 45]);
}

#[test]
fn a_torchscript_module_trains_and_checkpoints() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    common::run_python(&common::repo().join("tests/reference/export_torchscript.py"), &[d.to_str().unwrap()]);
    let model = format!("model.torchscript.path={}", d.join("model.pt").display());
    let data = format!("data.path={}", d.join("data.safetensors").display());
    let log = run(
        d,
        "ts",
        &[
            "model.kind=torchscript",
            &model,
            "data.kind=tensors",
            &data,
            "training.epochs=4",
            "training.batch_size=16",
            "training.optimizer.lr=1e-2",
        ],
    );
    let m = epochs(&d.join("ts"));
    assert!(m[3].train_loss < 0.5 * m[0].train_loss && m[3].val_accuracy > 0.9, "{m:?}");
    let latest = CheckpointFile::open(&d.join("ts/checkpoints/latest.safetensors")).unwrap();
    let names = latest.names().into_iter().map(String::from).collect::<Vec<_>>();
    assert!(
        names.contains(&"fc.weight".to_string()) && names.contains(&"optimizer/head.bias/exp_avg".to_string()),
        "{names:?}"
    );
    assert!(!log.contains("was traced"), "a scripted module is not frozen: {log}");
    // A module traced in eval mode trains with BatchNorm frozen: said, not silent.
    let traced = format!("model.torchscript.path={}", d.join("traced_eval.pt").display());
    let log_traced =
        run(d, "traced", &["model.kind=torchscript", &traced, "data.kind=tensors", &data, "training.epochs=1"]);
    assert!(log_traced.contains("traced in eval mode") && log_traced.contains("torch.jit.script"), "{log_traced}");
    // The checkpoint's weights load into the Python module itself, strictly.
    let check = format!(
        "import torch; from safetensors.torch import load_file\n\
         m = torch.jit.load('{}')\n\
         sd = {{k: v for k, v in load_file('{}').items() if not k.startswith('optimizer/')}}\n\
         m.load_state_dict(sd, strict=True)\n\
         assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())\n",
        d.join("model.pt").display(),
        d.join("ts/checkpoints/latest.safetensors").display()
    );
    let out = std::process::Command::new(common::python()).args(["-c", &check]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A module that does not fit the data is refused before training, naming the file.
    let mut cmd = common::train(d);
    cmd.args([
        "--output-dir",
        "bad",
        "--set",
        "model.kind=torchscript",
        "--set",
        &model,
        "--set",
        "data.kind=text",
        "--set",
    ]);
    cmd.arg(format!("data.path={}", d.join("model.pt").display()));
    cmd.assert().failure().stderr(predicates::str::contains("model.pt"));
    assert!(!d.join("bad").exists());
}

/// Writes `x` [rows, 4] f32 and `y` [rows] f32 regression targets; the first `poisoned`
/// rows' targets are `f32::MAX`, so any batch with one of them has an infinite squared
/// error (the last 10% of rows are the validation split). The data itself is finite: data
/// holding NaN or infinity is refused at load
/// (`nan_data_is_refused_at_load_naming_the_array_and_index`).
fn write_poisoned_tensors(path: &Path, rows: usize, poisoned: usize) {
    let x: Vec<u8> = (0..rows * 4).flat_map(|i| ((i % 7) as f32 * 0.1).to_le_bytes()).collect();
    let y: Vec<u8> =
        (0..rows).flat_map(|i| if i < poisoned { f32::MAX } else { (i % 2) as f32 }.to_le_bytes()).collect();
    let views = vec![
        ("x", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![rows, 4], &x).unwrap()),
        ("y", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![rows], &y).unwrap()),
    ];
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Regression (hardening report): a NaN loss was logged as `null`, the run exited 0 with
/// NaN checkpoints, and `train report` then failed. Now `training.on_nonfinite` decides,
/// no checkpoint ever holds non-finite weights, and the report draws the gap.
#[test]
fn a_non_finite_loss_stops_skips_or_continues_without_poisoning_latest() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    // Every training row poisoned for `stop` and `continue`; three of them for `skip_step`.
    write_poisoned_tensors(&d.join("all.safetensors"), 100, 100);
    write_poisoned_tensors(&d.join("some.safetensors"), 100, 3);
    let base = |file: &str| {
        vec![
            "data.kind=tensors".to_string(),
            format!("data.path={}", d.join(file).display()),
            "training.batch_size=10".into(),
            "training.epochs=2".into(),
            "training.log_every_n_steps=1".into(),
            "model.mlp.hidden=[8]".into(),
        ]
    };
    let cmd = |out: &str, file: &str, policy: &str| {
        let mut c = common::train(d);
        c.args(["--output-dir", out, "--set", "run.device=cpu", "--set", &format!("training.on_nonfinite={policy}")]);
        for s in base(file) {
            c.args(["--set", &s]);
        }
        c
    };

    let stop = cmd("stop", "all.safetensors", "stop").assert().code(3).get_output().clone();
    let stderr = String::from_utf8_lossy(&stop.stderr);
    assert!(stderr.contains("the loss diverged at step 1"), "{stderr}");
    assert!(!d.join("stop/checkpoints/latest.safetensors").exists(), "no checkpoint of a diverged state");
    common::train(d).args(["report", "stop", "--json"]).assert().success();

    cmd("skip", "some.safetensors", "skip_step").assert().success();
    let latest = CheckpointFile::open(&d.join("skip/checkpoints/latest.safetensors")).unwrap();
    for e in latest.entries() {
        let bytes = latest.read(&e.name).unwrap();
        if e.dtype == safetensors::Dtype::F32 {
            assert!(bytes.chunks(4).all(|b| f32::from_le_bytes(b.try_into().unwrap()).is_finite()), "{}", e.name);
        }
    }
    let events = MetricsLog::read_all(&d.join("skip/metrics.jsonl")).unwrap();
    assert!(events.iter().any(|l| matches!(l, MetricsLine::Event(e) if e.event == "nonfinite_loss")));
    common::train(d).args(["report", "skip"]).assert().success();

    let cont = cmd("continue", "all.safetensors", "continue").assert().success().get_output().clone();
    let stderr = String::from_utf8_lossy(&cont.stderr);
    assert!(stderr.contains("weights are not finite: checkpoint not written"), "{stderr}");
    assert!(!d.join("continue/checkpoints/latest.safetensors").exists());
}

#[test]
fn early_stopping_ends_the_run_keeps_the_best_epoch_and_stays_stopped() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    common::make_dataset(&d.join("data"), 256, 64);
    let data = format!("data.dir={}", d.join("data").display());
    // No epoch can improve on the first by more than 100: the first stays the best, and with
    // a patience of 1 the run ends after epoch 2 instead of 5.
    let sets = [
        data.as_str(),
        "training.batch_size=64",
        "model.mlp.hidden=[16]",
        "training.epochs=5",
        "training.early_stopping={metric: val_loss, patience: 1, min_delta: 100}",
        "checkpoint.keep_last=1",
    ];
    let log = run(d, "es", &sets);
    assert!(log.contains("early stopping"), "{log}");
    let m = epochs(&d.join("es"));
    assert_eq!(m.len(), 2, "{m:?}");
    // The epoch with the lowest validation loss is named, and its checkpoint kept.
    let best = if m[1].val_loss <= m[0].val_loss { 2 } else { 1 };
    let file = format!("epoch-{best:04}.safetensors");
    assert!(log.contains(&format!("epoch-{best:04}")), "{log}");
    // Regression (issue 17, item 12): the text said `best=0` where the metrics had 0.007256,
    // and "not improved for 2 epochs" while naming the last epoch as best. The value is
    // written out, and the last improvement is told apart from the best value.
    let value = format!("{:.6}", m[best - 1].val_loss);
    assert!(log.contains(&format!("its best value, {value} at epoch {best}")), "{log}");
    assert!(log.contains("last improved by more than 100 at epoch 1, 1 epochs ago"), "{log}");
    let files = common::files_under(&d.join("es/checkpoints"));
    assert!(files.contains(&file), "the best epoch is kept: {files:?}");
    // Running again does not train on: the metrics already say it plateaued.
    let again = run(d, "es", &sets);
    assert!(again.contains("early stopping"), "{again}");
    assert_eq!(epochs(&d.join("es")).len(), 2);
    // A patience of 0 is refused, naming the key.
    let mut cmd = common::train(d);
    cmd.args(["--output-dir", "bad", "--set", &data, "--set", "training.early_stopping={patience: 0}"]);
    cmd.assert().code(2).stderr(predicates::str::contains("training.early_stopping.patience"));
}

#[test]
fn eval_reports_the_loss_and_accuracy_the_run_logged() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    common::make_dataset(&d.join("data"), 256, 64);
    let data = format!("data.dir={}", d.join("data").display());
    let sets = [data.as_str(), "training.batch_size=64", "model.mlp.hidden=[16]", "training.epochs=2"];
    run(d, "r", &sets);
    let m = epochs(&d.join("r"));
    let mut cmd = common::train(d);
    cmd.args(["eval", "--checkpoint", "r/checkpoints/epoch-0002.safetensors", "--json", "--device", "cpu"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.assert().success().get_output().stdout.clone();
    let e: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!((e["epoch"].as_u64(), e["examples"].as_u64()), (Some(2), Some(64)));
    assert!((e["loss"].as_f64().unwrap() - m[1].val_loss).abs() < 1e-6, "{e} vs {:?}", m[1]);
    assert!((e["accuracy"].as_f64().unwrap() - m[1].val_accuracy).abs() < 1e-9, "{e}");
    // A checkpoint of another model is refused, naming the tensor.
    let mut cmd = common::train(d);
    cmd.args([
        "eval",
        "--checkpoint",
        "r/checkpoints/latest.safetensors",
        "--set",
        &data,
        "--set",
        "model.mlp.hidden=[8]",
    ]);
    cmd.assert().failure().stderr(predicates::str::contains("fc1"));
}

#[test]
fn a_garbage_metrics_line_does_not_refuse_a_resume_with_early_stopping() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    common::make_dataset(&d.join("data"), 128, 32);
    let data = format!("data.dir={}", d.join("data").display());
    let mut sets = vec![
        data.as_str(),
        "training.batch_size=64",
        "model.mlp.hidden=[8]",
        "training.epochs=1",
        "training.early_stopping={metric: val_loss, patience: 5}",
    ];
    run(d, "es", &sets);
    // A line of garbage in the middle (a disk error, an editor), newline and all.
    let path = d.join("es/metrics.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(1, "\u{0}\u{0}garbage{");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    sets[3] = "training.epochs=2";
    let log = run(d, "es", &sets);
    assert!(log.contains("skipping line 2 of the metrics"), "{log}");
    assert_eq!(epochs(&d.join("es")).len(), 2);
}

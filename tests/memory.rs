//! Memory-aware loading through the real binary: `train plan`, streaming that never holds
//! two tensors on the host, and out-of-memory recovery (simulated by the test-only fault
//! injection, since these machines have no GPU).

mod common;

use std::path::Path;

use predicates::prelude::*;
use train::metrics::{MetricsLine, MetricsLog};

/// A run folder with one checkpoint of an MLP with three large layers (16 MiB each at most).
fn checkpoint(ws: &Path) -> String {
    common::make_dataset(&ws.join("data"), 256, 64);
    let mut cmd = common::train(ws);
    cmd.args(["--experiment", "standard", "--output-dir", "big"]);
    let mut sets = common::quick_sets(&ws.join("data"));
    sets.extend(["model.mlp.hidden=[2048, 2048, 2048]".into(), "training.max_steps=1".into()]);
    common::with_sets(&mut cmd, &sets).assert().success();
    "big/checkpoints/latest.safetensors".into()
}

fn plan(ws: &Path, ckpt: &str, extra: &[&str]) -> serde_json::Value {
    let mut cmd = common::train(ws);
    cmd.args(["plan", "--experiment", "standard", "--checkpoint", ckpt, "--json"]).args(extra);
    let mut sets = common::quick_sets(&ws.join("data"));
    sets.push("model.mlp.hidden=[2048, 2048, 2048]".into());
    let out = common::with_sets(&mut cmd, &sets).assert().success().get_output().stdout.clone();
    serde_json::from_slice(&out).unwrap()
}

/// `train plan` shows what each rank would hold under each `distributed.shard`, and what
/// `auto` would choose from the free memory: the least sharding that fits.
#[test]
fn plan_shows_per_rank_state_under_each_sharding_and_auto_s_choice() {
    let ws = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(ws.path());
    // Weights w = 38 MiB and Adam's 2w over 2 ranks: 4w, 3w and 2.5w (152, 114, 95 MiB);
    // auto lets state take 0.6 of the free memory.
    for (free, chosen) in [("300MiB", "none"), ("200MiB", "optimizer"), ("170MiB", "optimizer_and_gradients")] {
        let p = plan(ws.path(), &ckpt, &["--ranks", "2", "--set", &format!("memory.assume_free_vram={free}")]);
        let shard = &p["shard"];
        assert_eq!(shard["ranks"], 2);
        let rows = shard["per_rank"].as_array().unwrap();
        let field = |i: usize, k: &str| rows[i][k].as_u64().unwrap();
        assert_eq!(
            rows.iter().map(|r| r["shard"].as_str().unwrap()).collect::<Vec<_>>(),
            ["none", "optimizer", "optimizer_and_gradients"]
        );
        assert_eq!(field(1, "optimizer") * 2, field(0, "optimizer"));
        assert_eq!(field(2, "gradients") * 2, field(0, "gradients"));
        assert_eq!(field(0, "weights"), field(2, "weights"));
        assert_eq!(shard["auto"], chosen, "{free}: {shard}");
    }
}

#[test]
fn plan_reports_the_probe_the_peaks_and_the_choice() {
    let ws = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(ws.path());
    let p = plan(ws.path(), &ckpt, &["--set", "memory.assume_free_vram=150MiB", "--set", "memory.strategy=auto"]);
    for key in ["strategy", "reason", "free_vram_bytes", "source", "predicted_peak_bytes"] {
        assert!(p.get(key).is_some(), "plan lacks `{key}`: {p}");
    }
    assert_eq!(p["source"], "memory.assume_free_vram");
    assert_eq!(p["free_vram_bytes"], 150 << 20);
    let peaks = p["predicted_peak_bytes"].as_object().unwrap();
    assert!(peaks["standard"].as_u64() > peaks["memory_efficient"].as_u64());
    assert!(peaks["memory_efficient"].as_u64() > peaks["model_only"].as_u64());
    // Model 38 MiB, Adam state 76 MiB, largest tensor 16 MiB: standard needs 153 MiB and
    // memory_efficient 131 MiB, against 135 MiB usable (90% of 150 MiB).
    assert_eq!(p["strategy"], "memory_efficient", "{p}");
    // model_only needs 54 MiB: it fits in 63 MiB usable, and nothing fits in 45.
    let tight = plan(ws.path(), &ckpt, &["--set", "memory.assume_free_vram=70MiB"]);
    assert_eq!(tight["strategy"], "model_only", "{tight}");
    assert!(tight["reason"].as_str().unwrap().contains("model_only fits"), "{tight}");
    let none = plan(ws.path(), &ckpt, &["--set", "memory.assume_free_vram=50MiB"]);
    assert!(none["reason"].as_str().unwrap().contains("nothing is predicted to fit"), "{none}");
    // Beside the model's figures, the data's: IDX images are held (320 examples of 784
    // floats and a label).
    assert_eq!(p["data"]["streamed"], false, "{p}");
    assert_eq!(p["data"]["host_bytes"], 320 * (784 * 4 + 8), "{p}");
}

#[test]
fn plan_states_a_streamed_data_sets_bound_beside_the_model() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    std::fs::write(d.join("t.bin"), vec![7u8; 1 << 20]).unwrap();
    let mut cmd = common::train(d);
    cmd.args(["plan", "--json"]);
    let sets = [
        "run.device=cpu",
        "data.kind=tokens",
        "data.path=t.bin",
        "model.kind=gpt",
        "model.gpt.context=32",
        "training.batch_size=16",
        "data.prefetch_batches=3",
        "data.workers=2",
    ];
    let out = common::with_sets(&mut cmd, &sets).assert().success().get_output().stdout.clone();
    let p: serde_json::Value = serde_json::from_slice(&out).unwrap();
    // Windows of 32 int64 inputs and 32 targets; 3 batches ahead + 2, of at least 256.
    assert_eq!(p["data"]["streamed"], true, "{p}");
    assert_eq!(p["data"]["example_bytes"], 2 * 32 * 8);
    assert_eq!(p["data"]["host_bytes"], 5 * 256 * 2 * 32 * 8);
    assert_eq!((p["data"]["workers"].as_u64(), p["data"]["prefetch_batches"].as_u64()), (Some(2), Some(3)));
    let mut text = common::train(d);
    text.arg("plan");
    let out = common::with_sets(&mut text, &sets).assert().success().get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("data       streamed: host memory at most 640.0 KiB"), "{text}");
}

#[test]
fn streaming_never_holds_two_tensors_on_the_host() {
    let ws = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(ws.path());
    let largest = 2048 * 2048 * 4;
    let weights = (784 * 2048 + 2 * 2048 * 2048 + 2048 * 10) * 4;
    let measure = |strategy: &str| -> u64 {
        let p = plan(ws.path(), &ckpt, &["--execute", "--set", &format!("memory.strategy={strategy}")]);
        assert_eq!(p["measured"]["strategy"], strategy);
        p["measured"]["host_peak_above_start_bytes"].as_u64().unwrap()
    };
    let streamed = measure("model_only");
    assert!(
        streamed < largest + largest / 2,
        "model_only held {streamed} bytes above the model; one tensor is {largest}"
    );
    let staged = measure("standard");
    assert!(staged > weights * 3 / 4, "standard staged only {staged} of {weights} bytes: the measurement cannot tell");
}

#[test]
fn an_out_of_memory_load_steps_down_to_a_cheaper_strategy() {
    let ws = tempfile::tempdir().unwrap();
    checkpoint(ws.path());
    let mut cmd = common::train(ws.path());
    cmd.args(["--experiment", "standard", "--output-dir", "big", "--set", "training.epochs=1"]);
    cmd.env("INJECT_FAULTS", "oom-load:standard,oom-load:memory_efficient");
    let mut sets = common::quick_sets(&ws.path().join("data"));
    sets.push("model.mlp.hidden=[2048, 2048, 2048]".into());
    common::with_sets(&mut cmd, &sets).assert().success().stderr(
        predicate::str::contains("stepping down to memory_efficient")
            .and(predicate::str::contains("stepping down to model_only"))
            .and(predicate::str::contains("the optimizer starts fresh"))
            .and(predicate::str::contains("resumed")),
    );
}

#[test]
fn out_of_memory_everywhere_stops_with_the_seeds_advice() {
    let ws = tempfile::tempdir().unwrap();
    checkpoint(ws.path());
    let mut cmd = common::train(ws.path());
    cmd.args(["--experiment", "standard", "--output-dir", "big", "--set", "training.epochs=1"]);
    cmd.env("INJECT_FAULTS", "oom-load:standard,oom-load:memory_efficient,oom-load:model_only");
    let mut sets = common::quick_sets(&ws.path().join("data"));
    sets.push("model.mlp.hidden=[2048, 2048, 2048]".into());
    common::with_sets(&mut cmd, &sets)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no cheaper strategy left").and(predicate::str::contains("grad_accum_steps")));
}

#[test]
fn an_out_of_memory_step_halves_the_micro_batch_and_keeps_the_effective_batch() {
    let ws = tempfile::tempdir().unwrap();
    common::make_dataset(&ws.path().join("data"), 256, 64);
    let run = |out: &str, faults: Option<&str>| {
        let mut cmd = common::train(ws.path());
        cmd.args(["--experiment", "standard", "--output-dir", out]);
        if let Some(f) = faults {
            cmd.env("INJECT_FAULTS", f);
        }
        let mut sets = common::quick_sets(&ws.path().join("data"));
        sets.push("training.epochs=2".into());
        common::with_sets(&mut cmd, &sets).assert()
    };
    run("plain", None).success();
    run("oom", Some("oom-step:3")).success().stderr(predicate::str::contains("halving the micro-batch"));
    let lines = MetricsLog::read_all(&ws.path().join("oom/metrics.jsonl")).unwrap();
    let events: Vec<_> = lines
        .iter()
        .filter_map(|l| match l {
            MetricsLine::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(events.len(), 1, "{lines:?}");
    assert_eq!((events[0].step, events[0].grad_accum_steps, events[0].micro_batch), (3, 2, 16));
    // Same data, same effective batch: the two runs agree to float tolerance.
    let a = MetricsLog::read(&ws.path().join("plain/metrics.jsonl")).unwrap();
    let b = MetricsLog::read(&ws.path().join("oom/metrics.jsonl")).unwrap();
    assert!((a[1].val_loss - b[1].val_loss).abs() < 1e-4 * a[1].val_loss.abs().max(1.0), "{a:?} vs {b:?}");

    run("stuck", Some("oom-step-always:2"))
        .code(1)
        .stderr(predicate::str::contains("training step 2").and(predicate::str::contains("no cheaper strategy left")));
}

#[test]
fn the_library_api_loads_weights_only_and_reports_differences() {
    use tch::nn;
    let ws = tempfile::tempdir().unwrap();
    let ckpt = ws.path().join(checkpoint(ws.path()));
    // A model with one layer the checkpoint lacks and without one it has.
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let root = vs.root();
    let _fc1 = nn::linear(&root / "fc1", 784, 2048, Default::default());
    let _extra = nn::linear(&root / "extra", 4, 4, Default::default());
    let err = train::guide::load_model_only(&vs, &ckpt, true).unwrap_err().to_string();
    assert!(err.contains("which the model does not have") && err.contains("fc2."), "{err}");
    let (epoch, _, outcome) = train::guide::load_model_only(&vs, &ckpt, false).unwrap();
    assert_eq!(epoch, 0);
    assert_eq!(outcome.weights, 2);
    assert_eq!(outcome.missing, ["extra.bias", "extra.weight"]);
    assert!(outcome.unexpected.contains(&"out.weight".to_string()), "{:?}", outcome.unexpected);
    let file = train::checkpoint::CheckpointFile::open(&ckpt).unwrap();
    let w = file.read("fc1.weight").unwrap();
    let loaded: Vec<f32> = Vec::try_from(vs.variables()["fc1.weight"].flatten(0, -1)).unwrap();
    assert_eq!(
        loaded[..4],
        w[..16].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>()[..]
    );
}

//! The configuration layers, driven through the real binary: each layer overrides the one
//! below and is named as the source of what it sets; every kind of bad input exits 2 with
//! an error naming the culprit, and writes nothing.

mod common;

use std::path::Path;

use predicates::prelude::*;
use serde_json::Value;

fn show(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut cmd = common::train(cwd);
    cmd.args(["config", "show", "--json"]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.assert().success().get_output().stdout.clone();
    serde_json::from_slice(&out).unwrap()
}

fn origin(shown: &Value, key: &str) -> (Value, String) {
    let o = shown["origins"].as_array().unwrap().iter().find(|o| o["key"] == key).unwrap_or_else(|| panic!("no {key}"));
    (o["value"].clone(), o["source"].as_str().unwrap().to_string())
}

const FILE: &str = "\
training:
  epochs: 3
  batch_size: 16
  seed: 1
memory:
  save_optimizer_in_epoch_checkpoints: false
experiments:
  standard:
    training:
      batch_size: 24
      seed: 2
  custom:
    model:
      kind: cnn
";

#[test]
fn each_layer_overrides_the_one_below_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.yaml"), FILE).unwrap();
    let shown = show(
        dir.path(),
        &["--config", "c.yaml", "--experiment", "standard", "--set", "training.seed=4"],
        &[("TRAIN_TRAINING__SEED", "3"), ("TRAIN_TRAINING__BATCH_SIZE", "32")],
    );
    // built-in default, untouched by any layer
    assert_eq!(origin(&shown, "training.optimizer.lr"), (0.001.into(), "built-in default".into()));
    // profile over default (default is true)
    assert_eq!(origin(&shown, "memory.checkpoint_memory_efficient"), (false.into(), "profile standard".into()));
    // file over profile (the profile says true)
    assert_eq!(origin(&shown, "memory.save_optimizer_in_epoch_checkpoints"), (false.into(), "file c.yaml".into()));
    // file over default
    assert_eq!(origin(&shown, "training.epochs"), (3.into(), "file c.yaml".into()));
    // experiment section over file: (batch_size is overridden again by env below; seed by --set)
    // environment over experiment section
    assert_eq!(
        origin(&shown, "training.batch_size"),
        (32.into(), "environment variable TRAIN_TRAINING__BATCH_SIZE".into())
    );
    // --set over environment
    assert_eq!(origin(&shown, "training.seed"), (4.into(), "--set training.seed=4".into()));
    assert_eq!(
        shown["layers"],
        serde_json::json!([
            "built-in default",
            "profile standard",
            "file c.yaml",
            "experiment standard in c.yaml",
            "environment variable TRAIN_TRAINING__BATCH_SIZE",
            "environment variable TRAIN_TRAINING__SEED",
            "--set training.seed=4"
        ])
    );

    let shown = show(dir.path(), &["--config", "c.yaml", "--experiment", "standard"], &[]);
    assert_eq!(origin(&shown, "training.batch_size"), (24.into(), "experiment standard in c.yaml".into()));
}

#[test]
fn a_file_experiment_without_a_profile_applies_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.yaml"), FILE).unwrap();
    let shown = show(dir.path(), &["-c", "c.yaml", "-e", "custom"], &[]);
    assert_eq!(origin(&shown, "model.kind"), ("cnn".into(), "experiment custom in c.yaml".into()));
    assert_eq!(origin(&shown, "memory.checkpoint_memory_efficient").1, "built-in default");
}

#[test]
fn the_shipped_config_resolves_with_every_profile() {
    let repo = common::repo();
    for exp in ["standard", "balanced", "ultra_low_memory", "finetune", "smoke"] {
        let shown = show(&repo, &["--config", "configs/config_memory_optimized.yaml", "--experiment", exp], &[]);
        assert_eq!(shown["experiment"], exp);
    }
    let shown =
        show(&repo, &["--config", "configs/config_memory_optimized.yaml", "--experiment", "ultra_low_memory"], &[]);
    assert_eq!(shown["config"]["memory"]["load_optimizer_state"], false);
    assert_eq!(shown["config"]["memory"]["compress_checkpoints"], true);
}

#[test]
fn text_output_names_each_source() {
    let dir = tempfile::tempdir().unwrap();
    common::train(dir.path())
        .args(["config", "show", "--experiment", "balanced", "--set", "training.epochs=2"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("training.epochs = 2").and(predicate::str::contains("# --set training.epochs=2")),
        )
        .stdout(predicate::str::contains("# profile balanced"));
}

#[test]
fn profiles_lists_what_each_sets() {
    let dir = tempfile::tempdir().unwrap();
    common::train(dir.path()).arg("profiles").assert().success().stdout(
        predicate::str::contains("ultra_low_memory:")
            .and(predicate::str::contains("memory.load_optimizer_state = false"))
            .and(predicate::str::contains("standard:")),
    );
}

/// Runs `train` with `args` in an empty folder and checks: exit 2, stderr matching every
/// fragment, and the folder still empty (no run folder, nothing else).
fn refused(setup: impl FnOnce(&Path), args: &[&str], env: &[(&str, &str)], fragments: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let before = common::files_under(dir.path());
    let mut cmd = common::train(dir.path());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // A bound, so a refusal that regresses into a hang (a FIFO) fails instead of waiting.
    let assert = cmd.timeout(std::time::Duration::from_secs(60)).assert().code(2);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    for f in fragments {
        assert!(stderr.contains(f), "stderr lacks {f:?}:\n{stderr}");
    }
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    assert_eq!(common::files_under(dir.path()), before, "a refused run wrote files");
}

fn write(name: &'static str, text: &'static str) -> impl FnOnce(&Path) {
    move |dir| std::fs::write(dir.join(name), text).unwrap()
}

#[test]
fn rejects_unknown_key_naming_file_and_nearest_key() {
    refused(
        write("c.yaml", "memory:\n  compress_checkpoint: true\n"),
        &["--config", "c.yaml"],
        &[],
        &["unknown key `memory.compress_checkpoint`", "file c.yaml", "did you mean `memory.compress_checkpoints`"],
    );
}

#[test]
fn rejects_unknown_key_in_an_experiment_section() {
    refused(
        write("c.yaml", "experiments:\n  fast:\n    training:\n      batchsize: 4\n"),
        &["run", "--config", "c.yaml", "--experiment", "fast"],
        &[],
        &["unknown key `training.batchsize`", "experiment fast in c.yaml", "`training.batch_size`"],
    );
}

#[test]
fn rejects_unknown_environment_key() {
    refused(
        |_| {},
        &["--experiment", "balanced"],
        &[("TRAIN_MEMORY__LOAD_OPTIMIZER_STAT", "false")],
        &["environment variable TRAIN_MEMORY__LOAD_OPTIMIZER_STAT", "`memory.load_optimizer_state`"],
    );
}

#[test]
fn rejects_wrong_type_naming_key_and_expected_type() {
    refused(
        write("c.yaml", "training:\n  epochs: lots\n"),
        &["--config", "c.yaml"],
        &[],
        &["`training.epochs`", "file c.yaml", "expected u32", "\"lots\""],
    );
    refused(
        |_| {},
        &["--experiment", "standard", "--set", "memory.load_optimizer_state=maybe"],
        &[],
        &["`memory.load_optimizer_state`", "expected a boolean"],
    );
}

#[test]
fn rejects_unknown_experiment_listing_valid_names() {
    refused(
        write("c.yaml", "experiments:\n  mine: {}\n"),
        &["--config", "c.yaml", "--experiment", "ultra_low"],
        &[],
        &["unknown experiment `ultra_low`", "standard, balanced, ultra_low_memory, mine"],
    );
}

#[test]
fn rejects_missing_config_file() {
    refused(
        |_| {},
        &["--config", "missing.yaml", "--experiment", "standard"],
        &[],
        &["cannot read config file missing.yaml"],
    );
}

#[test]
fn rejects_unreadable_config_file() {
    refused(
        |d| std::fs::create_dir(d.join("adir.yaml")).unwrap(),
        &["--config", "adir.yaml"],
        &[],
        &["cannot read config file adir.yaml"],
    );
}

#[test]
fn rejects_invalid_yaml_with_its_position() {
    refused(
        write("c.yaml", "training: [\n"),
        &["--config", "c.yaml"],
        &[],
        &["config file c.yaml is not valid", "line"],
    );
}

#[test]
fn rejects_set_that_does_not_parse() {
    refused(
        |_| {},
        &["--experiment", "standard", "--set", "training.epochs"],
        &[],
        &["--set training.epochs", "KEY=VALUE"],
    );
    refused(|_| {}, &["--experiment", "standard", "--set", "training.epochs=[1"], &[], &["is not YAML"]);
    refused(|_| {}, &["--experiment", "standard", "--set", ".x=1"], &[], &["not a dotted key"]);
}

#[test]
fn rejects_values_that_break_a_rule() {
    refused(|_| {}, &["--set", "training.epochs=0"], &[], &["`training.epochs`", "at least 1"]);
    refused(|_| {}, &["--device", "tpu"], &[], &["`run.device`", "--device tpu", "not a device"]);
    if !tch::Cuda::is_available() {
        refused(|_| {}, &["--set", "training.precision=bf16"], &[], &["training.precision bf16", "cpu"]);
    }
}

#[test]
fn rejects_missing_data_before_writing_anything() {
    refused(
        |_| {},
        &["--experiment", "standard", "--set", "data.dir=nowhere"],
        &[],
        &["nowhere/train-images-idx3-ubyte.gz not found", "data.dir"],
    );
}

#[test]
fn rejects_run_threads_beyond_four_per_core() {
    let cores = std::thread::available_parallelism().unwrap().get();
    refused(|_| {}, &["--set", "run.threads=100000"], &[], &["`run.threads`", "is 100000", "4 per core"]);
    let limit = format!("run.threads={}", 4 * cores + 1);
    refused(|_| {}, &["--set", &limit], &[], &["`run.threads`"]);
    let ok = format!("run.threads={}", 4 * cores);
    show(Path::new("."), &["--set", &ok], &[]);
}

#[test]
fn rejects_a_fixed_size_list_of_the_wrong_length() {
    refused(
        |_| {},
        &["--set", "training.optimizer.betas=[0.9, 0.99, 0.5]"],
        &[],
        &[
            "`training.optimizer.betas`",
            "--set training.optimizer.betas",
            "invalid length 3, expected exactly 2 values",
        ],
    );
    refused(|_| {}, &["--set", "training.optimizer.betas=[0.9]"], &[], &["`training.optimizer.betas`", "length 1"]);
    refused(|_| {}, &["--set", "model.cnn.channels=[8, 16, 32]"], &[], &["`model.cnn.channels`", "length 3"]);
}

#[test]
fn rejects_absurd_optimizer_values_naming_the_key() {
    for (set, key) in [
        ("training.optimizer.dampening=.nan", "`training.optimizer.dampening`"),
        ("training.optimizer.dampening=-5", "`training.optimizer.dampening`"),
        ("training.optimizer.momentum=1e300", "`training.optimizer.momentum`"),
        ("training.optimizer.momentum=.nan", "`training.optimizer.momentum`"),
        ("training.optimizer.lr=1e308", "`training.optimizer.lr`"),
        ("training.optimizer.lr=.inf", "`training.optimizer.lr`"),
    ] {
        refused(|_| {}, &["--set", "training.optimizer.kind=sgd", "--set", set], &[], &[key, "must be in"]);
    }
}

#[test]
fn rejects_min_lr_above_lr_and_warmup_longer_than_the_run() {
    refused(
        |_| {},
        &["--set", "training.schedule.kind=cosine", "--set", "training.schedule.min_lr=0.1"],
        &[],
        &["`training.schedule.min_lr`", "above training.optimizer.lr"],
    );
    // 100 examples (90 after the validation split) in batches of 50: 2 steps an epoch.
    refused(
        |_| {},
        &[
            "--set",
            "training.schedule.warmup_steps=5",
            "--set",
            "training.epochs=2",
            "--set",
            "training.batch_size=50",
            "--set",
            "data.train_limit=100",
        ],
        &[],
        &["`training.schedule.warmup_steps`", "longer than the whole run (4 steps"],
    );
}

#[test]
fn help_lists_every_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::train(dir.path()).arg("--help").assert().success().get_output().stdout.clone();
    let help = String::from_utf8(out).unwrap();
    for code in [
        "0 success",
        "1 runtime failure",
        "2 usage",
        "3 the loss became NaN",
        "75 stopped by SIGTERM/SIGINT",
        "130 a second signal",
    ] {
        assert!(help.contains(code), "{code:?} not in:\n{help}");
    }
}

/// Regression (hardening report): `--resume ''` said "checkpoint : No such file".
#[test]
fn rejects_an_empty_resume_path_naming_the_key() {
    refused(|_| {}, &["--resume", ""], &[], &["`run.resume`", "is empty"]);
}

#[test]
fn a_fifo_as_config_file_is_refused_instead_of_blocking_in_open() {
    let started = std::time::Instant::now();
    refused(
        |d| {
            let fifo = std::ffi::CString::new(d.join("c.yaml").to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
            assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        },
        &["--config", "c.yaml"],
        &[],
        &["cannot read config file c.yaml", "not a regular file"],
    );
    assert!(started.elapsed().as_secs() < 20, "took {:?}", started.elapsed());
}

#[test]
fn dev_zero_as_config_file_is_refused_without_reading_it_all() {
    refused(|_| {}, &["--config", "/dev/zero"], &[], &["cannot read config file /dev/zero", "not a regular file"]);
}

#[test]
fn a_config_file_over_16_mib_is_refused_naming_the_limit() {
    refused(
        |d| {
            let f = std::fs::File::create(d.join("big.yaml")).unwrap();
            // Sparse: 17 MiB of zero bytes costs no disk.
            f.set_len(17 << 20).unwrap();
        },
        &["--config", "big.yaml"],
        &[],
        &["cannot read config file big.yaml", "larger than 16.0 MiB"],
    );
}

#[test]
fn deeply_nested_yaml_is_refused_quickly_naming_the_file() {
    let started = std::time::Instant::now();
    refused(
        |d| std::fs::write(d.join("deep.yaml"), format!("training: {}", "[".repeat(200_000))).unwrap(),
        &["--config", "deep.yaml"],
        &[],
        &["config file deep.yaml is not valid", "line 1: nested more than 64 levels deep"],
    );
    let block: String = (0..100).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect();
    refused(
        move |d| std::fs::write(d.join("deep.yaml"), block).unwrap(),
        &["--config", "deep.yaml"],
        &[],
        &["config file deep.yaml is not valid", "line 65: nested more than 64 levels deep"],
    );
    refused(
        |d| std::fs::write(d.join("deep.yaml"), format!("training:\n  {}x\n", "- ".repeat(100))).unwrap(),
        &["--config", "deep.yaml"],
        &[],
        &["line 2: nested more than 64 levels deep"],
    );
    assert!(started.elapsed().as_secs() < 20, "took {:?}", started.elapsed());
}

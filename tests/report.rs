//! `train report RUN_DIR`: the real binary on a metrics.jsonl written here, as a run would
//! write it; the picture it draws and the summary it prints.

mod common;

use std::path::Path;

use predicates::prelude::*;
use train::metrics::{EpochMetrics, MetricsLine, MetricsLog, StepMetrics};

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// A run folder holding 3 epochs of 40 steps, a step line every 10 steps; validation loss
/// is lowest after epoch 2.
fn run_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let log = MetricsLog::new(dir.path().join("metrics.jsonl"));
    for epoch in 1..=3u32 {
        for i in 1..=4u64 {
            let step = u64::from(epoch - 1) * 40 + i * 10;
            log.append(&MetricsLine::Step(StepMetrics {
                epoch,
                step,
                loss: 2.0 / (1.0 + step as f64 / 20.0),
                lr: 1e-3 * (1.0 - step as f64 / 150.0),
                samples_per_sec: 900.0,
                elapsed_seconds: step as f64 / 10.0,
                host_rss_bytes: Some((100 + step) << 20),
                device_allocated_bytes: None,
                device_peak_allocated_bytes: None,
            }))
            .unwrap();
        }
        log.append(&MetricsLine::Epoch(EpochMetrics {
            train_loss: 1.0 / f64::from(epoch),
            val_accuracy: 0.7 + 0.05 * f64::from(epoch),
            ..epoch_line(epoch, [0.9, 0.6, 0.7][epoch as usize - 1])
        }))
        .unwrap();
    }
    dir
}

fn report(cwd: &Path, args: &[&str]) -> assert_cmd::assert::Assert {
    common::train(cwd).arg("report").args(args).assert()
}

#[test]
fn draws_a_png_in_the_run_folder_and_prints_the_summary() {
    let run = run_folder();
    let out = report(run.path(), &["."]).success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    for expected in [
        "epochs completed    3\n",
        "optimizer steps     120\n",
        "best val_loss       0.6000 (epoch 2)\n",
        "final train_loss    0.3333\n",
        "final val_loss      0.7000\n",
        "final val_accuracy  0.8500\n",
        "mean samples/s      1000.0\n",
        "peak host RSS       512.0 MiB\n",
        "checkpoint blocked  0.38 s\n",
        "picture             ./report.png\n",
    ] {
        assert!(stdout.contains(expected), "{expected:?} not in:\n{stdout}");
    }
    let png = std::fs::read(run.path().join("report.png")).unwrap();
    assert_eq!(&png[..8], PNG_SIGNATURE);
    // Four panels of curves, grids and text: tens of kilobytes; a blank 1400x900 is ~5 KB.
    assert!(png.len() > 20_000, "{} bytes", png.len());
}

#[test]
fn draws_an_svg_when_the_output_says_so_and_prints_json() {
    let run = run_folder();
    let svg = run.path().join("pictures/run.svg");
    std::fs::create_dir(svg.parent().unwrap()).unwrap();
    let out = report(run.path(), &[".", "--output", svg.to_str().unwrap(), "--json"]).success();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("Learning rate"), "{}", &text[..200.min(text.len())]);
    assert!(!run.path().join("report.png").exists());

    let json: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(json["epochs_completed"], 3);
    assert_eq!(json["steps"], 120);
    assert_eq!(json["best_val_loss"], 0.6);
    assert_eq!(json["best_val_loss_epoch"], 2);
    assert_eq!(json["final_val_accuracy"], 0.85);
    assert_eq!(json["mean_samples_per_sec"], 1000.0);
    assert_eq!(json["peak_host_rss_bytes"], 512u64 << 20);
    assert_eq!(json["checkpoint_blocked_seconds"], 0.375);
    assert_eq!(json["picture"], svg.to_str().unwrap());
}

#[test]
fn a_missing_run_folder_fails_naming_it() {
    let ws = tempfile::tempdir().unwrap();
    report(ws.path(), &["no-such-run"])
        .code(1)
        .stderr(predicate::str::contains("run folder no-such-run not found"))
        .stdout("");
}

#[test]
fn an_unknown_picture_format_fails_before_drawing() {
    let run = run_folder();
    report(run.path(), &[".", "-o", "report.jpg"])
        .code(1)
        .stderr(predicate::str::contains("report.jpg").and(predicate::str::contains(".png or .svg")));
    assert!(!run.path().join("report.jpg").exists());
}

#[test]
fn a_torn_last_line_is_skipped_with_a_warning() {
    let run = run_folder();
    let path = run.path().join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"kind\": \"step\", \"epo");
    std::fs::write(&path, text).unwrap();
    let out = report(run.path(), &[".", "--json"]).success();
    let json: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(json["steps"], 120);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr);
    assert!(stderr.contains("skipping the last line") && stderr.contains("line=16"), "{stderr}");
}

#[test]
fn a_bad_line_in_the_middle_fails_naming_file_and_line() {
    let run = run_folder();
    let path = run.path().join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(3, "{\"kind\": \"step\", \"epo");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    report(run.path(), &["."]).code(1).stderr(predicate::str::contains("metrics.jsonl: line 4 is not a metrics line"));
}

#[test]
fn a_line_torn_by_a_crash_is_cut_off_before_the_next_run_appends() {
    let run = run_folder();
    let path = run.path().join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&path).unwrap();
    // A crash in the middle of writing a line (the old writer's JSON without its newline).
    text.push_str(&serde_json::to_string(&MetricsLine::Epoch(epoch_line(4, f64::NAN))).unwrap());
    std::fs::write(&path, text).unwrap();
    // The resumed run's first line.
    MetricsLog::new(path.clone()).append(&MetricsLine::Epoch(epoch_line(4, 0.5))).unwrap();
    let lines = MetricsLog::read_all(&path).unwrap();
    assert_eq!(lines.len(), 16);
    assert_eq!(lines[15], MetricsLine::Epoch(epoch_line(4, 0.5)));
    report(run.path(), &["."]).success();
}

#[test]
fn a_nan_loss_is_drawn_as_a_gap_not_an_error() {
    let run = run_folder();
    let log = MetricsLog::new(run.path().join("metrics.jsonl"));
    log.append(&MetricsLine::Step(StepMetrics {
        epoch: 4,
        step: 130,
        loss: f64::NAN,
        lr: 1e-3,
        samples_per_sec: 900.0,
        elapsed_seconds: 13.0,
        host_rss_bytes: None,
        device_allocated_bytes: None,
        device_peak_allocated_bytes: None,
    }))
    .unwrap();
    log.append(&MetricsLine::Epoch(epoch_line(4, f64::NAN))).unwrap();
    let text = std::fs::read_to_string(run.path().join("metrics.jsonl")).unwrap();
    assert!(text.contains("\"loss\":null"), "serde_json writes NaN as null");
    let lines = MetricsLog::read_all(&run.path().join("metrics.jsonl")).unwrap();
    assert!(matches!(&lines[15], MetricsLine::Step(s) if s.loss.is_nan()));
    let out = report(run.path(), &[".", "--json", "-o", "r.svg"]).success();
    let json: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!((json["epochs_completed"].clone(), json["final_val_loss"].clone()), (4.into(), serde_json::Value::Null));
    assert_eq!(json["best_val_loss"], 0.6);
}

fn epoch_line(epoch: u32, val_loss: f64) -> EpochMetrics {
    EpochMetrics {
        epoch,
        step: u64::from(epoch) * 40,
        train_loss: 0.5,
        val_loss,
        val_accuracy: 0.8,
        lr: 1e-3,
        train_seconds: 4.0,
        samples_per_sec: 1000.0,
        eval_seconds: 0.5,
        checkpoint_blocked_seconds: 0.125,
        host_rss_bytes: Some(512 << 20),
        data_wait_seconds: 0.0,
        skipped_samples: 0,
    }
}

#[test]
fn a_fifo_as_metrics_file_is_refused_instead_of_hanging() {
    let run = tempfile::tempdir().unwrap();
    let fifo = std::ffi::CString::new(run.path().join("metrics.jsonl").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    common::train(run.path())
        .arg("report")
        .arg(".")
        .timeout(std::time::Duration::from_secs(30))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("metrics.jsonl").and(predicate::str::contains("not a regular file")));
}

//! Data read example by example from its files (issue 19): the `tokens` kind against the
//! in-memory `text` kind it generalises, exact resume in the middle of an epoch, host memory
//! that does not grow with the file, and a bad token mid-epoch.

mod common;

use std::path::Path;

use train::checkpoint::CheckpointFile;
use train::metrics::MetricsLog;

/// Text with structure a small gpt learns: a few words in a seeded order.
fn text(bytes: usize) -> Vec<u8> {
    let words = ["the ", "cat ", "sat ", "on ", "a ", "mat. ", "dogs ", "run "];
    let mut state = 7u64;
    let mut out = Vec::with_capacity(bytes + 8);
    while out.len() < bytes {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        out.extend_from_slice(words[(state >> 60) as usize % words.len()].as_bytes());
    }
    out.truncate(bytes);
    out
}

/// The bytes of `text` as a token file of `width` bytes per token.
fn tokens_of(text: &[u8], width: usize) -> Vec<u8> {
    text.iter().flat_map(|&b| (b as u32).to_le_bytes()[..width].to_vec()).collect()
}

const GPT: [&str; 8] = [
    "run.device=cpu",
    "model.kind=gpt",
    "model.gpt.context=16",
    "model.gpt.width=32",
    "model.gpt.depth=1",
    "model.gpt.heads=2",
    "training.batch_size=8",
    "training.optimizer.lr=3e-3",
];

fn run(d: &Path, out: &str, sets: &[&str]) -> String {
    let o = train_with(d, &GPT, out, sets).success().get_output().clone();
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `train` in `d` into `out`, with `sets` then `extra` as `--set` arguments.
fn train_with(d: &Path, sets: &[&str], out: &str, extra: &[&str]) -> assert_cmd::assert::Assert {
    let mut cmd = common::train(d);
    cmd.args(["--output-dir", out]);
    common::with_sets(&mut cmd, sets);
    common::with_sets(&mut cmd, extra);
    cmd.assert()
}

fn same_checkpoints(a: &Path, b: &Path) {
    let (fa, fb) = (CheckpointFile::open(a).unwrap(), CheckpointFile::open(b).unwrap());
    assert_eq!(fa.names(), fb.names());
    for name in fa.names() {
        assert!(fa.read(name).unwrap() == fb.read(name).unwrap(), "tensor `{name}` differs: {a:?} against {b:?}");
    }
}

#[test]
fn a_token_file_trains_exactly_as_the_same_text_held_in_memory() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    let t = text(16 * 8 * 12 + 1);
    std::fs::write(d.join("text.txt"), &t).unwrap();
    std::fs::write(d.join("u16.bin"), tokens_of(&t, 2)).unwrap();
    std::fs::write(d.join("u32.bin"), tokens_of(&t, 4)).unwrap();
    run(d, "text", &["data.kind=text", "data.path=text.txt", "training.epochs=2"]);
    let vocab = "model.gpt.vocab=256";
    let log = run(d, "u16", &["data.kind=tokens", "data.path=u16.bin", vocab, "training.epochs=2"]);
    assert!(log.contains("data streamed from its files") && log.contains("host_bound"), "{log}");
    run(d, "u32", &["data.kind=tokens", "data.path=u32.bin", "data.dtype=uint32", vocab, "training.epochs=2"]);
    let m = MetricsLog::read(&d.join("u16/metrics.jsonl")).unwrap();
    assert!(m[1].train_loss < m[0].train_loss, "the loss falls: {m:?}");
    for other in ["u16", "u32"] {
        same_checkpoints(
            &d.join("text/checkpoints/latest.safetensors"),
            &d.join(other).join("checkpoints/latest.safetensors"),
        );
    }
    // Without model.gpt.vocab the vocabulary is the largest token + 1, found by a scan.
    let log = run(d, "scanned", &["data.kind=tokens", "data.path=u16.bin", "training.epochs=1"]);
    let largest = *t.iter().max().unwrap() as u64 + 1;
    assert!(log.contains(&format!("vocab={largest}")), "{log}");
}

#[test]
fn a_stop_mid_epoch_resumes_on_the_exact_next_batch_with_any_worker_count() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    std::fs::write(d.join("t.bin"), tokens_of(&text(16 * 8 * 10 + 1), 2)).unwrap();
    let data = ["data.kind=tokens", "data.path=t.bin", "training.epochs=2"];
    run(d, "full", &data);
    // 9 batches an epoch: stop after 13 steps, in the second epoch, then resume with other
    // worker and prefetch counts (the order is a function of the seed, not of the pipeline).
    run(d, "cut", &[&data[..], &["training.max_steps=13", "data.workers=1"]].concat());
    let log = run(d, "cut", &[&data[..], &["data.workers=2", "data.prefetch_batches=5"]].concat());
    assert!(log.contains("resumed"), "{log}");
    same_checkpoints(&d.join("full/checkpoints/latest.safetensors"), &d.join("cut/checkpoints/latest.safetensors"));
}

#[test]
fn host_memory_does_not_grow_with_the_token_file() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    let unit = tokens_of(&text(1 << 16), 2);
    std::fs::write(d.join("small.bin"), &unit).unwrap();
    // 256 times larger (32 MiB): read window by window, it must leave no trace in RSS.
    let mut large = std::fs::File::create(d.join("large.bin")).unwrap();
    for _ in 0..256 {
        std::io::Write::write_all(&mut large, &unit).unwrap();
    }
    drop(large);
    // The vocabulary scan reads every token of the file; training reads the first windows.
    let rss = |out: &str, file: &str| {
        let sets = [&format!("data.path={file}")[..], "data.kind=tokens", "training.epochs=1"];
        run(d, out, &[&sets[..], &["data.train_limit=160", "data.val_limit=64"]].concat());
        MetricsLog::read(&d.join(out).join("metrics.jsonl")).unwrap()[0].host_rss_bytes.unwrap()
    };
    let (small, large) = (rss("small", "small.bin"), rss("large", "large.bin"));
    eprintln!("RSS after an epoch: {} MiB with a 128 KiB file, {} MiB with 32 MiB", small >> 20, large >> 20);
    assert!(large < small + (8 << 20), "RSS grew with the file: {small} -> {large}");
}

#[test]
fn a_token_outside_the_vocabulary_stops_the_run_naming_file_and_example() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    let mut t = tokens_of(&text(16 * 8 * 4 + 1), 2);
    let at = (t.len() / 2) & !1;
    t[at..at + 2].copy_from_slice(&999u16.to_le_bytes());
    std::fs::write(d.join("bad.bin"), &t).unwrap();
    let bad = ["data.kind=tokens", "data.path=bad.bin", "model.gpt.vocab=256", "training.epochs=1"];
    let o = train_with(d, &GPT, "bad", &bad).failure().get_output().clone();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.bin") && err.contains("token 999") && err.contains("example"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// The folders `tests/reference/make_npy_folders.py` writes with numpy, made once.
fn npy_folders() -> &'static Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("npy-folders");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        common::run_python(&common::repo().join("tests/reference/make_npy_folders.py"), &[dir.to_str().unwrap()]);
        dir
    })
}

fn npy_config(dir: &Path) -> train::config::DataConfig {
    train::config::DataConfig {
        kind: train::config::DataKind::Npy,
        path: Some(dir.to_path_buf()),
        val_fraction: 0.125,
        ..Default::default()
    }
}

#[test]
fn npy_folders_in_every_dtype_numpy_writes_read_as_numpy_reads_them() {
    let root = npy_folders();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("dtypes/expected.json")).unwrap()).unwrap();
    let expected = expected.as_object().unwrap();
    assert_eq!(expected.len(), 21, "every dtype, both byte orders where numpy has two");
    for (name, want) in expected {
        let data = train::data::Dataset::load(&npy_config(&root.join("dtypes").join(name)), 8, None, &[])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((data.train.len(), data.val.len()), (7, 1), "{name}");
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for split in [&data.train, &data.val] {
            let rows: Vec<i64> = (0..split.len() as i64).collect();
            let (x, y) = split.batch(&rows, train::data::Pass::default(), tch::Device::Cpu).unwrap();
            xs.extend(Vec::<f32>::try_from(x[0].flatten(0, -1)).unwrap());
            ys.extend(Vec::<i64>::try_from(y).unwrap());
        }
        let want_x: Vec<f32> = want["x"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().clone())
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let want_y: Vec<i64> = want["y"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(xs, want_x, "{name}: x");
        assert_eq!(ys, want_y, "{name}: y");
    }
    // Written through np.lib.format.open_memmap, as numpy.memmap users write arrays.
    let data = train::data::Dataset::load(&npy_config(&root.join("mm")), 8, None, &[]).unwrap();
    let (x, y) = data.train.batch(&[3], train::data::Pass::default(), tch::Device::Cpu).unwrap();
    assert_eq!(Vec::<f32>::try_from(x[0].flatten(0, -1)).unwrap(), [12.0, 13.0, 14.0, 15.0]);
    assert_eq!(Vec::<i64>::try_from(y).unwrap(), [0]);
}

#[test]
fn npy_folders_numpy_cannot_mean_are_refused_naming_the_array() {
    let root = npy_folders();
    for (folder, says) in
        [("fortran", "Fortran order"), ("short", "the file holds"), ("structured", "structured array")]
    {
        let err = train::data::Dataset::load(&npy_config(&root.join(folder)), 8, None, &[]).unwrap_err().to_string();
        assert!(err.contains(says) && err.contains("x.npy"), "{folder}: {err}");
    }
}

#[test]
fn an_npy_folder_trains_exactly_as_the_same_arrays_held_in_memory_and_resumes_mid_epoch() {
    let root = npy_folders();
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    let common = ["run.device=cpu", "model.mlp.hidden=[16]", "training.batch_size=8", "training.epochs=2"];
    let mlp = |out: &str, sets: &[&str]| {
        let o = train_with(d, &common, out, sets).success().get_output().clone();
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let npy = format!("data.path={}", root.join("same").display());
    let st = format!("data.path={}", root.join("same.safetensors").display());
    mlp("memory", &["data.kind=tensors", &st]);
    mlp("npy", &["data.kind=npy", &npy]);
    same_checkpoints(&d.join("memory/checkpoints/latest.safetensors"), &d.join("npy/checkpoints/latest.safetensors"));
    // 86 training rows in batches of 8: 11 an epoch. Stop at 15, resume with 2 workers.
    mlp("cut", &["data.kind=npy", &npy, "training.max_steps=15"]);
    let log = mlp("cut", &["data.kind=npy", &npy, "data.workers=2"]);
    assert!(log.contains("resumed"), "{log}");
    same_checkpoints(&d.join("npy/checkpoints/latest.safetensors"), &d.join("cut/checkpoints/latest.safetensors"));
}

#[test]
fn bad_images_are_skipped_and_counted_identically_after_a_resume_or_stop_the_run() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    for (c, class) in ["a", "b"].iter().enumerate() {
        std::fs::create_dir_all(d.join("imgs").join(class)).unwrap();
        for i in 0..20 {
            let img =
                image::RgbImage::from_fn(12, 12, |x, y| image::Rgb([(x * 20) as u8, (y * 20) as u8, (c * 200) as u8]));
            img.save(d.join("imgs").join(class).join(format!("{i:02}.png"))).unwrap();
        }
    }
    // Two broken files among the training images (the last fifth of each class is held out).
    std::fs::write(d.join("imgs/a/03.png"), b"\x89PNG\r\n\x1a\n but no more").unwrap();
    std::fs::write(d.join("imgs/b/07.png"), b"not an image at all").unwrap();
    let sets = [
        "run.device=cpu",
        "data.kind=image_folder",
        "data.dir=imgs",
        "data.image_size=[8, 8]",
        "data.val_fraction=0.2",
        "model.mlp.hidden=[16]",
        "training.batch_size=4",
        "training.epochs=2",
    ];
    let go = |out: &str, extra: &[&str]| train_with(d, &sets, out, extra);
    let failed = go("strict", &[]).failure().get_output().clone();
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(err.contains("cannot decode") && (err.contains("a/03.png") || err.contains("b/07.png")), "{err}");

    let log =
        String::from_utf8_lossy(&go("skip", &["data.on_bad_sample=skip"]).success().get_output().stderr).into_owned();
    assert!(log.contains("skipping a bad sample") && log.contains("a/03.png") && log.contains("b/07.png"), "{log}");
    let m = MetricsLog::read(&d.join("skip/metrics.jsonl")).unwrap();
    assert_eq!(m.iter().map(|e| e.skipped_samples).collect::<Vec<_>>(), [2, 2], "both, every epoch");
    // 32 training images in batches of 4: stop inside the second epoch, resume, same weights.
    go("cut", &["data.on_bad_sample=skip", "training.max_steps=11"]).success();
    go("cut", &["data.on_bad_sample=skip", "data.workers=2"]).success();
    same_checkpoints(&d.join("skip/checkpoints/latest.safetensors"), &d.join("cut/checkpoints/latest.safetensors"));
}

/// The shards `tests/reference/make_webdataset.py` writes with Python's tarfile, made once.
fn webdataset_shards() -> &'static Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("webdataset");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        common::run_python(&common::repo().join("tests/reference/make_webdataset.py"), &[dir.to_str().unwrap()]);
        dir
    })
}

#[test]
fn webdataset_shards_written_by_python_read_with_pythons_labels_from_a_folder_or_a_pattern() {
    let root = webdataset_shards();
    let expected: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(root.join("expected.json")).unwrap()).unwrap();
    let classes: Vec<i64> = expected.iter().map(|e| e["class"].as_i64().unwrap()).collect();
    let pattern = root.join("shards/train-{000000..000002}.tar");
    for path in [root.join("shards"), pattern] {
        let cfg = train::config::DataConfig {
            kind: train::config::DataKind::Webdataset,
            path: Some(path.clone()),
            image_size: [8, 8],
            val_fraction: 0.25,
            ..Default::default()
        };
        let data = train::data::Dataset::load(&cfg, 8, None, &[]).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        assert_eq!((data.train.len(), data.val.len()), (27, 9), "{path:?}");
        let mut got = Vec::new();
        for split in [data.train, data.val] {
            let rows: Vec<i64> = (0..split.len() as i64).collect();
            let (x, y) = split.with_workers(2).batch(&rows, train::data::Pass::default(), tch::Device::Cpu).unwrap();
            assert_eq!(x[0].size(), [rows.len() as i64, 3, 8, 8]);
            // The class is the brightest channel.
            let brightest = x[0].mean_dim(&[2i64, 3][..], false, tch::Kind::Float).argmax(1, false);
            assert!(brightest.equal(&y), "{path:?}: images and labels disagree");
            got.extend(Vec::<i64>::try_from(y).unwrap());
        }
        assert_eq!(got, classes, "{path:?}");
    }
}

#[test]
fn webdataset_trains_resumes_exactly_and_a_damaged_shard_is_named() {
    let root = webdataset_shards();
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    let shards = format!("data.path={}", root.join("shards").display());
    let sets = [
        "run.device=cpu",
        "data.kind=webdataset",
        &shards,
        "data.image_size=[8, 8]",
        "model.mlp.hidden=[16]",
        "training.batch_size=4",
        "training.epochs=3",
        "training.optimizer.lr=3e-3",
    ];
    let go = |out: &str, extra: &[&str]| train_with(d, &sets, out, extra);
    let log = String::from_utf8_lossy(&go("full", &[]).success().get_output().stderr).into_owned();
    assert!(log.contains("shards=3 samples=36 classes=3"), "{log}");
    let m = MetricsLog::read(&d.join("full/metrics.jsonl")).unwrap();
    assert!(m[2].train_loss < m[0].train_loss, "{m:?}");
    // 32 training samples in batches of 4: 8 an epoch. Stop at 11, resume with 2 workers.
    go("cut", &["training.max_steps=11"]).success();
    go("cut", &["data.workers=2"]).success();
    same_checkpoints(&d.join("full/checkpoints/latest.safetensors"), &d.join("cut/checkpoints/latest.safetensors"));

    let broken = format!("data.path={}", root.join("broken").display());
    let out = go("broken", &[&broken]).failure().get_output().clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("train-000001.tar") && err.contains("damaged tar header"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A small image folder of 2 classes x `n` noisy 24x20 PNGs under `d/imgs`.
fn noisy_images(d: &Path, n: u32) {
    for (c, class) in ["a", "b"].iter().enumerate() {
        std::fs::create_dir_all(d.join("imgs").join(class)).unwrap();
        for i in 0..n {
            let img = image::RgbImage::from_fn(24, 20, |x, y| {
                let noise = (x * 31 + y * 17 + i * 7) % 50;
                image::Rgb([(c as u32 * 150 + noise) as u8, (x * 9 + noise) as u8, (y * 11) as u8])
            });
            img.save(d.join("imgs").join(class).join(format!("{i:02}.png"))).unwrap();
        }
    }
}

/// Augmentations of every kind, then the eval list, as YAML lists' items.
const TRAIN_LIST: &str = "RandomResizedCrop: {size: 16, scale: [0.5, 1.0]}, RandomHorizontalFlip: {p: 0.5}, \
                          ColorJitter: {brightness: 0.3, contrast: 0.3, saturation: 0.3}, \
                          Normalize: {mean: [0.5], std: [0.25]}";
const EVAL_LIST: &str = "Resize: {size: 18}, CenterCrop: {size: 16}, Normalize: {mean: [0.5], std: [0.25]}";

/// `--set`s of an mlp trained on `noisy_images` with both lists, in batches of `batch`.
fn augmented_sets(batch: u32, epochs: u32) -> Vec<String> {
    let mut sets: Vec<String> = [
        "run.device=cpu",
        "data.kind=image_folder",
        "data.dir=imgs",
        "data.image_size=[16, 16]",
        "data.val_fraction=0.2",
        "model.mlp.hidden=[16]",
    ]
    .map(String::from)
    .to_vec();
    sets.extend([
        format!("training.batch_size={batch}"),
        format!("training.epochs={epochs}"),
        format!("data.transforms.train=[{TRAIN_LIST}]"),
        format!("data.transforms.eval=[{EVAL_LIST}]"),
    ]);
    sets
}

#[test]
fn augmentations_draw_anew_each_epoch_the_same_on_any_worker_and_eval_is_fixed() {
    let ws = tempfile::tempdir().unwrap();
    noisy_images(ws.path(), 10);
    let mut cfg = train::config::Config::default();
    cfg.data.kind = train::config::DataKind::ImageFolder;
    cfg.data.dir = ws.path().join("imgs");
    cfg.data.image_size = [16, 16];
    cfg.data.val_fraction = 0.2;
    cfg.data.transforms = serde_yaml::from_str(&format!("train: [{TRAIN_LIST}]\neval: [{EVAL_LIST}]")).unwrap();
    let data = train::data::Dataset::load(&cfg.data, 8, None, &[]).unwrap();
    let pass = |epoch| train::data::Pass { seed: 42, epoch };
    let rows = [0i64, 3, 1];
    let x = |split: &train::data::Split, workers, epoch| {
        let split = split.shallow_clone().with_workers(workers);
        split.batch(&rows, pass(epoch), tch::Device::Cpu).unwrap().0.remove(0)
    };
    let e1 = x(&data.train, 1, 1);
    assert_eq!(e1.size(), [3, 3, 16, 16]);
    assert!(e1.equal(&x(&data.train, 3, 1)), "the same epoch's draws on any worker count");
    assert!(!e1.equal(&x(&data.train, 1, 2)), "another epoch draws anew");
    assert!(x(&data.val, 1, 1).equal(&x(&data.val, 2, 5)), "the eval list is deterministic");
}

#[test]
fn an_augmented_run_stopped_mid_epoch_resumes_on_the_same_crops() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    noisy_images(d, 10);
    let sets = augmented_sets(4, 2);
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let go = |out: &str, extra: &[&str]| {
        train_with(d, &sets, out, extra).success();
    };
    go("full", &[]);
    // 16 training images in batches of 4: stop at 6 steps, in the second epoch.
    go("cut", &["training.max_steps=6"]);
    go("cut", &["data.workers=2"]);
    same_checkpoints(&d.join("full/checkpoints/latest.safetensors"), &d.join("cut/checkpoints/latest.safetensors"));
}

#[test]
fn sigterm_mid_epoch_on_augmented_images_exits_75_and_resumes_bit_for_bit() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    noisy_images(d, 60);
    let sets = augmented_sets(2, 3);
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let mut args: Vec<String> = vec!["--output-dir".into(), "a".into()];
    args.extend(sets.iter().flat_map(|s| ["--set".to_string(), s.to_string()]));
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("train"))
        .current_dir(d)
        .args(&args)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(d.join("a.log")).unwrap())
        .spawn()
        .unwrap();
    // Once the first epoch's line is written, the run is inside the second epoch.
    let start = std::time::Instant::now();
    while std::fs::read_to_string(d.join("a/metrics.jsonl")).map_or(0, |t| t.lines().count()) < 1 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before its first epoch line");
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "no epoch within a minute");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert!(std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(d.join("a.log")).unwrap();
    assert_eq!(status.code(), Some(75), "{log}");
    let meta = CheckpointFile::open(&d.join("a/checkpoints/latest.safetensors")).unwrap().meta().unwrap().clone();
    eprintln!("SIGTERM landed at epoch {} + {} batches", meta.epoch(), meta.position.batches_into_epoch);
    train_with(d, &sets, "a", &[]).success();
    train_with(d, &sets, "b", &[]).success();
    same_checkpoints(&d.join("a/checkpoints/latest.safetensors"), &d.join("b/checkpoints/latest.safetensors"));
}

//! Degenerate and hostile data sets and models, through the real binary: each is refused
//! with one clear line naming the file or key (exit 2 when the configuration is at fault,
//! 1 when a data file is), never a libtorch panic (exit 101), and nothing is written.

mod common;

use std::io::Write;
use std::path::Path;

use train::data::idx::encode_idx;

/// Runs `train` in `dir` with `sets` (plus `--output-dir out`) and checks: exit `code`,
/// stderr holding every fragment, no panic or C++ stack frames, and no run folder.
fn refused(dir: &Path, sets: &[String], code: i32, fragments: &[&str]) -> String {
    let mut cmd = common::train(dir);
    cmd.args(["--output-dir", "out"]);
    common::with_sets(&mut cmd, sets);
    let out = cmd.timeout(std::time::Duration::from_secs(120)).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    for f in fragments {
        assert!(stderr.contains(f), "stderr lacks {f:?}:\n{stderr}");
    }
    for bad in ["panicked", "frame #", "Exception raised from", "RUST_BACKTRACE"] {
        assert!(!stderr.contains(bad), "{bad:?} in:\n{stderr}");
    }
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line:\n{stderr}");
    assert!(!dir.join("out").exists(), "a refused run wrote its folder");
    stderr
}

fn base(dir: &Path) -> Vec<String> {
    vec![format!("data.dir={}", dir.join("data").display()), "run.device=cpu".into(), "model.mlp.hidden=[8]".into()]
}

/// An IDX data set of `train`/`val` examples of `h`x`w` images, plain (not gzipped).
fn idx_set(dir: &Path, train: usize, val: usize, (h, w): (usize, usize)) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (split, n) in [("train", train), ("t10k", val)] {
        let images = encode_idx(&[n, h, w], &vec![7; n * h * w]);
        let labels = encode_idx(&[n], &(0..n).map(|i| (i % 3) as u8).collect::<Vec<_>>());
        std::fs::write(data.join(format!("{split}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(data.join(format!("{split}-labels-idx1-ubyte")), labels).unwrap();
    }
}

/// A safetensors file written byte by byte, so that headers can say anything.
fn safetensors(path: &Path, tensors: &[(&str, &str, &[u64], &[u8])]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut header = serde_json::to_vec(&header).unwrap();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    file.write_all(&header).unwrap();
    file.write_all(&data).unwrap();
}

/// A small mlp on the CPU over data of `kind` at `path` (the value of `key`).
fn sets_for(kind: &str, key: &str, path: &Path) -> Vec<String> {
    vec![
        format!("data.kind={kind}"),
        format!("{key}={}", path.display()),
        "run.device=cpu".into(),
        "model.mlp.hidden=[8]".into(),
    ]
}

fn tensors_sets(path: &Path) -> Vec<String> {
    sets_for("tensors", "data.path", path)
}

fn f32s(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

fn i64s(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn an_idx_split_without_examples_is_refused() {
    let ws = tempfile::tempdir().unwrap();
    idx_set(ws.path(), 0, 4, (28, 28));
    refused(ws.path(), &base(ws.path()), 1, &["train split", "holds no examples"]);
}

#[test]
fn empty_idx_images_are_refused() {
    let ws = tempfile::tempdir().unwrap();
    idx_set(ws.path(), 4, 4, (0, 0));
    refused(ws.path(), &base(ws.path()), 1, &["train split", "images are 0x0 pixels"]);
}

#[test]
fn a_gzip_bomb_is_refused_after_reading_only_what_its_header_promises() {
    let ws = tempfile::tempdir().unwrap();
    idx_set(ws.path(), 4, 4, (28, 28));
    let data = ws.path().join("data");
    std::fs::remove_file(data.join("train-images-idx3-ubyte")).unwrap();
    // A header promising 4 images, then 256 MiB of zeros: about 256 KiB of gzip.
    let file = std::fs::File::create(data.join("train-images-idx3-ubyte.gz")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    gz.write_all(&encode_idx(&[4, 28, 28], &[])).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        gz.write_all(&zeros).unwrap();
    }
    gz.finish().unwrap();
    refused(
        ws.path(),
        &base(ws.path()),
        1,
        &["train-images-idx3-ubyte.gz is malformed", "more data than the 3136 bytes its header promises"],
    );
}

#[test]
fn tensors_with_zero_rows_or_features_or_a_scalar_x_are_refused() {
    let ws = tempfile::tempdir().unwrap();
    let p = ws.path().join("d.safetensors");
    let y10 = i64s(&[0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
    safetensors(&p, &[("x", "F32", &[10, 0], &[]), ("y", "I64", &[10], &y10)]);
    refused(ws.path(), &tensors_sets(&p), 1, &["d.safetensors", "`x` is [10, 0]", "no dimension may be 0"]);
    safetensors(&p, &[("x", "F32", &[0, 4], &[]), ("y", "I64", &[0], &[])]);
    refused(ws.path(), &tensors_sets(&p), 1, &["d.safetensors", "no dimension may be 0"]);
    safetensors(&p, &[("x", "F32", &[], &f32s(1)), ("y", "I64", &[1], &i64s(&[0]))]);
    refused(ws.path(), &tensors_sets(&p), 1, &["d.safetensors", "`x` is []", "the first input needs [N, ...]"]);
}

#[test]
fn a_class_id_of_two_to_the_forty_is_refused_before_sizing_the_model() {
    let ws = tempfile::tempdir().unwrap();
    let p = ws.path().join("d.safetensors");
    let mut y = vec![0i64; 9];
    y.push(1 << 40);
    safetensors(&p, &[("x", "F32", &[10, 2], &f32s(20)), ("y", "I64", &[10], &i64s(&y))]);
    refused(ws.path(), &tensors_sets(&p), 1, &["d.safetensors", "class 1099511627776", "0..16777216"]);
}

#[test]
fn f8_data_names_the_unsupported_dtype() {
    let ws = tempfile::tempdir().unwrap();
    let p = ws.path().join("d.safetensors");
    safetensors(&p, &[("x", "F8_E4M3", &[10, 2], &[0; 20]), ("y", "I64", &[10], &i64s(&[0; 10]))]);
    refused(ws.path(), &tensors_sets(&p), 1, &["d.safetensors", "array `x` has dtype F8_E4M3, which is not supported"]);
    // A dtype the safetensors crate itself does not know.
    safetensors(&p, &[("x", "F32", &[10, 2], &f32s(20)), ("y", "Q4", &[10], &[0; 10])]);
    refused(ws.path(), &tensors_sets(&p), 1, &["array `y` has dtype Q4, which is not supported"]);
}

#[test]
fn a_missing_data_path_is_a_configuration_error_naming_key_and_file() {
    let ws = tempfile::tempdir().unwrap();
    let p = ws.path().join("nowhere.safetensors");
    refused(ws.path(), &tensors_sets(&p), 2, &["data.path", "nowhere.safetensors not found"]);
    let mut text = tensors_sets(&ws.path().join("nowhere.txt"));
    text[0] = "data.kind=text".into();
    text.push("model.kind=gpt".into());
    refused(ws.path(), &text, 2, &["data.path", "nowhere.txt not found"]);
}

#[test]
fn a_model_larger_than_memory_is_refused_naming_the_key_and_size() {
    let ws = tempfile::tempdir().unwrap();
    idx_set(ws.path(), 4, 4, (28, 28));
    let mut sets = base(ws.path());
    sets.push("model.mlp.hidden=[4000000000]".into());
    let started = std::time::Instant::now();
    refused(
        ws.path(),
        &sets,
        2,
        &["model.mlp.hidden = [4000000000]", "3152000000003 parameters (11.5 TiB)", "of host memory available"],
    );
    assert!(started.elapsed().as_secs() < 30, "refused before allocating");
}

#[test]
fn a_missing_torchscript_file_is_named_in_one_line() {
    let ws = tempfile::tempdir().unwrap();
    idx_set(ws.path(), 4, 4, (28, 28));
    let mut sets = base(ws.path());
    sets.extend(["model.kind=torchscript".to_string(), "model.torchscript.path=nope.pt".to_string()]);
    refused(ws.path(), &sets, 2, &["model.torchscript.path nope.pt not found"]);
    // A file that is not a TorchScript archive: libtorch's message, without its C++ frames.
    std::fs::write(ws.path().join("nope.pt"), "not a zip archive").unwrap();
    refused(ws.path(), &sets, 1, &["cannot load TorchScript module nope.pt", "PytorchStreamReader"]);
}

/// A `.npy` entry (format 1.0) holding `data` under a header that declares `shape`.
fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// An `.npz` archive of `entries` (name without `.npy`, bytes), stored uncompressed.
fn npz(path: &Path, entries: &[(&str, Vec<u8>)]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in entries {
        zip.start_file(format!("{name}.npy"), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

fn npz_sets(path: &Path) -> Vec<String> {
    sets_for("npz", "data.path", path)
}

#[test]
fn an_npz_shape_that_overflows_is_refused_naming_array_and_file() {
    let ws = tempfile::tempdir().unwrap();
    let p = ws.path().join("d.npz");
    let y = npy("<i8", "(16,)", &i64s(&[0; 16]));
    // 2^64 float32 values declared in a 578-byte entry: the product wraps to 0 unchecked.
    npz(&p, &[("x", npy("<f4", "(16, 1073741824, 1073741824)", &[0; 400])), ("y", y.clone())]);
    refused(
        ws.path(),
        &npz_sets(&p),
        2,
        &["d.npz cannot be used", "array `x` declares shape [16, 1073741824, 1073741824]", "overflows"],
    );
    // A size that does not overflow but is more than the entry holds.
    npz(&p, &[("x", npy("<f4", "(16, 1048576, 1024)", &[0; 400])), ("y", y)]);
    refused(
        ws.path(),
        &npz_sets(&p),
        2,
        &["d.npz cannot be used", "array `x` declares shape [16, 1048576, 1024]", "holds only"],
    );
}

/// An image folder `data/` with `per_class` 16x16 images in each of `classes`, as `ext`.
fn image_folder(dir: &Path, classes: &[&str], per_class: usize, ext: &str) -> std::path::PathBuf {
    let data = dir.join("data");
    for (c, class) in classes.iter().enumerate() {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..per_class {
            let img = image::RgbImage::from_fn(16, 16, |x, y| {
                image::Rgb([(x * 16) as u8, (y * 16) as u8, (c * 80 + i) as u8])
            });
            img.save(data.join(class).join(format!("{i}.{ext}"))).unwrap();
        }
    }
    data
}

fn image_sets(data: &Path) -> Vec<String> {
    let mut sets = sets_for("image_folder", "data.dir", data);
    sets.extend(["data.image_size=[8, 8]".into(), "data.val_fraction=0.25".into(), "training.epochs=1".into()]);
    sets
}

#[test]
fn a_half_truncated_jpeg_is_refused_naming_the_file() {
    let ws = tempfile::tempdir().unwrap();
    let data = image_folder(ws.path(), &["a", "b"], 4, "jpg");
    // Large enough that the cut falls in the entropy-coded data, past every header.
    let victim = data.join("b").join("2.jpg");
    image::RgbImage::from_fn(256, 256, |x, y| image::Rgb([(x ^ y) as u8, (x * y) as u8, (x + 3 * y) as u8]))
        .save(&victim)
        .unwrap();
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    refused(ws.path(), &image_sets(&data), 1, &["b/2.jpg cannot be used", "example 5", "JPEG data is cut short"]);
}

#[test]
fn an_empty_class_folder_is_refused_naming_it() {
    let ws = tempfile::tempdir().unwrap();
    let data = image_folder(ws.path(), &["a", "b"], 4, "png");
    std::fs::create_dir(data.join("c_empty")).unwrap();
    refused(ws.path(), &image_sets(&data), 2, &["c_empty cannot be used", "holds no PNG or JPEG images"]);
}

#[test]
fn a_symlink_to_the_root_is_not_counted_as_a_class() {
    let ws = tempfile::tempdir().unwrap();
    let data = image_folder(ws.path(), &["a", "b"], 4, "png");
    std::os::unix::fs::symlink("/", data.join("everything")).unwrap();
    refused(ws.path(), &image_sets(&data), 2, &["everything cannot be used", "symbolic link to /, outside data.dir"]);
    // A link that stays inside the data is a class like any other.
    std::fs::remove_file(data.join("everything")).unwrap();
    std::os::unix::fs::symlink(data.join("b"), data.join("c")).unwrap();
    let mut cmd = common::train(ws.path());
    common::with_sets(cmd.args(["--output-dir", "out"]), &image_sets(&data));
    cmd.assert().success();
}

#[test]
fn early_stopping_on_val_accuracy_for_regression_is_refused_naming_the_key() {
    let ws = tempfile::tempdir().unwrap();
    let p = ws.path().join("d.safetensors");
    safetensors(&p, &[("x", "F32", &[10, 2], &f32s(20)), ("y", "F32", &[10], &f32s(10))]);
    let mut sets = tensors_sets(&p);
    sets.push("training.early_stopping={metric: val_accuracy, patience: 1}".into());
    refused(ws.path(), &sets, 2, &["training.early_stopping.metric", "regression", "no accuracy"]);
}

/// A memory cgroup limited to `limit` bytes, removed on drop; `None` where this process may
/// not make one (not root, no memory controller).
struct MemoryCgroup(std::path::PathBuf);

impl MemoryCgroup {
    fn new(limit: u64) -> Option<Self> {
        let name = format!("train-test-{}", std::process::id());
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let (dir, file) = if v2 {
            (Path::new("/sys/fs/cgroup").join(&name), "memory.max")
        } else {
            (Path::new("/sys/fs/cgroup/memory").join(&name), "memory.limit_in_bytes")
        };
        std::fs::create_dir(&dir).ok()?;
        let group = Self(dir);
        std::fs::write(group.0.join(file), limit.to_string()).ok()?;
        Some(group)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_data_set_larger_than_its_memory_cgroup_is_refused_naming_the_cgroup() {
    let Some(group) = MemoryCgroup::new(900 << 20) else {
        eprintln!("skipped: cannot make a memory cgroup here");
        return;
    };
    let ws = tempfile::tempdir().unwrap();
    let p = ws.path().join("d.safetensors");
    // 512 MiB of float32 `x` (a sparse file: zeros cost no disk): 1.5 GiB once loaded,
    // far below the host's available memory, above the cgroup's 900 MiB.
    let rows = 1u64 << 20;
    let mut h = serde_json::Map::new();
    h.insert("y".into(), serde_json::json!({"dtype": "I64", "shape": [rows], "data_offsets": [0, rows * 8]}));
    h.insert(
        "x".into(),
        serde_json::json!({"dtype": "F32", "shape": [rows, 128], "data_offsets": [rows * 8, rows * 8 + rows * 512]}),
    );
    let mut h = serde_json::to_vec(&h).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&h).unwrap();
    f.set_len(8 + h.len() as u64 + rows * 8 + rows * 512).unwrap();
    drop(f);
    let procs = group.0.join("cgroup.procs");
    let exe = assert_cmd::cargo::cargo_bin("train");
    let mut args = vec!["--output-dir".to_string(), "out".into()];
    for s in tensors_sets(&p) {
        args.extend(["--set".into(), s]);
    }
    let script = format!("echo $$ > {} && exec \"$@\"", procs.display());
    let out = std::process::Command::new("bash")
        .args(["-c", &script, "bash"])
        .arg(&exe)
        .args(&args)
        .current_dir(ws.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("d.safetensors needs"), "{stderr}");
    assert!(stderr.contains("cgroup limit of /sys/fs/cgroup/"), "{stderr}");
    assert!(stderr.contains("train-test-"), "{stderr}");
    assert!(!ws.path().join("out").exists());
}

#[test]
fn a_file_size_limit_fails_the_save_naming_the_file_instead_of_killing_with_153() {
    let ws = tempfile::tempdir().unwrap();
    idx_set(ws.path(), 64, 16, (28, 28));
    let exe = assert_cmd::cargo::cargo_bin("train");
    let mut args = vec!["--output-dir".to_string(), "out".into()];
    let mut sets = base(ws.path());
    // 784 x 512 float32 weights: a 1.6 MB checkpoint, past a 256 KiB limit.
    sets[2] = "model.mlp.hidden=[512]".into();
    sets.push("training.epochs=1".into());
    for s in sets {
        args.extend(["--set".into(), s]);
    }
    let out = std::process::Command::new("bash")
        .args(["-c", "ulimit -f 256 && exec \"$@\"", "bash"])
        .arg(&exe)
        .args(&args)
        .current_dir(ws.path())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let error = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(error.contains("out/checkpoints"), "{error}");
    assert!(error.contains("file-size limit, `ulimit -f`, was reached"), "{error}");
}

#[test]
fn nan_data_is_refused_at_load_naming_the_array_and_index() {
    let ws = tempfile::tempdir().unwrap();
    let p = ws.path().join("d.safetensors");
    let y = i64s(&[0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
    let mut x: Vec<f32> = (0..20).map(|i| i as f32).collect();
    x[7] = f32::NAN;
    let x: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    safetensors(&p, &[("x", "F32", &[10, 2], &x), ("y", "I64", &[10], &y)]);
    refused(ws.path(), &tensors_sets(&p), 2, &["d.safetensors cannot be used", "array `x` holds NaN at index [3, 1]"]);
    // A float64 target beyond float32's range becomes infinite once converted.
    let y: Vec<u8> = (0..10).flat_map(|i| if i == 4 { 1e300f64 } else { 0.5 }.to_le_bytes()).collect();
    safetensors(&p, &[("x", "F32", &[10, 2], &f32s(20)), ("y", "F64", &[10], &y)]);
    refused(ws.path(), &tensors_sets(&p), 2, &["array `y` holds inf at index [4]"]);
}

#[test]
fn a_nan_resume_or_init_file_is_refused_naming_file_and_tensor_instead_of_the_lr_advice() {
    let ws = tempfile::tempdir().unwrap();
    let p = ws.path().join("d.safetensors");
    safetensors(&p, &[("x", "F32", &[10, 2], &f32s(20)), ("y", "I64", &[10], &i64s(&[0, 1, 0, 1, 0, 1, 0, 1, 0, 1]))]);
    let mut cmd = common::train(ws.path());
    common::with_sets(cmd.args(["--output-dir", "good"]), &tensors_sets(&p));
    cmd.arg("--set").arg("training.epochs=1").assert().success();
    // The good run's weights, the first one poisoned with a NaN, as a plain safetensors file.
    let latest =
        train::checkpoint::CheckpointFile::open(&ws.path().join("good/checkpoints/latest.safetensors")).unwrap();
    let mut tensors: Vec<(String, Vec<u64>, Vec<u8>)> = Vec::new();
    for e in latest.entries().iter().filter(|e| !e.name.starts_with(train::checkpoint::OPTIMIZER_PREFIX)) {
        let mut bytes = latest.read(&e.name).unwrap().to_vec();
        if tensors.is_empty() {
            bytes[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        }
        tensors.push((e.name.clone(), e.shape.iter().map(|&d| d as u64).collect(), bytes));
    }
    let first = tensors[0].0.clone();
    let table: Vec<(&str, &str, &[u64], &[u8])> =
        tensors.iter().map(|(n, s, b)| (n.as_str(), "F32", s.as_slice(), b.as_slice())).collect();
    safetensors(&ws.path().join("nan.safetensors"), &table);
    let mut sets = tensors_sets(&p);
    sets.push("run.resume=nan.safetensors".into());
    refused(ws.path(), &sets, 2, &["nan.safetensors", &format!("tensor `{first}` holds NaN values")]);
    let mut sets = tensors_sets(&p);
    sets.push("model.init_from=nan.safetensors".into());
    refused(ws.path(), &sets, 2, &["nan.safetensors", &format!("tensor `{first}` holds NaN values")]);
}

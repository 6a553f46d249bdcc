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

fn tensors_sets(path: &Path) -> Vec<String> {
    vec![
        "data.kind=tensors".into(),
        format!("data.path={}", path.display()),
        "run.device=cpu".into(),
        "model.mlp.hidden=[8]".into(),
    ]
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
    refused(ws.path(), &tensors_sets(&p), 1, &["d.safetensors", "`x` is []", "need inputs [N, ...]"]);
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
    let mut sets = tensors_sets(path);
    sets[0] = "data.kind=npz".into();
    sets
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

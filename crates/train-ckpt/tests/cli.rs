//! The `train-ckpt` binary: the `ckpt` commands without libtorch.

use std::path::Path;
use std::process::Command;

use safetensors::tensor::TensorView;
use train_ckpt::write::serialize_views;
use train_ckpt::Meta;

mod common;

use common::tckpt;

/// A checkpoint of ours: two weights and an optimizer slot, sealed metadata.
fn write_checkpoint(path: &Path) {
    let a: Vec<u8> = (0..64u32).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
    let b: Vec<u8> = (0..8u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let views = [
        ("fc.weight", TensorView::new(safetensors::Dtype::F32, vec![8, 8], &a).unwrap()),
        ("fc.bias", TensorView::new(safetensors::Dtype::F32, vec![8], &b).unwrap()),
        ("optimizer/fc.bias/exp_avg", TensorView::new(safetensors::Dtype::F32, vec![8], &b).unwrap()),
    ];
    let views: Vec<(&str, &TensorView)> = views.iter().map(|(n, v)| (*n, v)).collect();
    let bytes = serialize_views(path, &views, &Meta::sample("adamw", true)).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn the_binary_needs_no_libtorch() {
    let out = Command::new("readelf").args(["-d", env!("CARGO_BIN_EXE_train-ckpt")]).output();
    let Ok(out) = out else {
        eprintln!("skipped: readelf is not installed");
        return;
    };
    let needed = String::from_utf8_lossy(&out.stdout);
    assert!(needed.contains("NEEDED"), "{needed}");
    assert!(!needed.contains("torch") && !needed.contains("c10"), "{needed}");
}

#[test]
fn verify_inspect_convert_and_strip_work_without_libtorch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_checkpoint(&d.join("a.safetensors"));
    for args in [
        &["verify", "a.safetensors"][..],
        &["convert", "a.safetensors", "a.tckpt"],
        &["verify", "a.tckpt"],
        &["strip", "a.tckpt", "-o", "w.tckpt"],
    ] {
        let out = tckpt(d, args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = tckpt(d, &["verify", "a.tckpt"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("is sound (3 tensors"));
    let out = tckpt(d, &["inspect", "--json", "w.tckpt"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((j["tensors"].as_u64(), j["has_optimizer_state"].as_bool()), (Some(2), Some(false)));
    // Damage is caught and named, exit 1, as `train ckpt` does.
    let mut bytes = std::fs::read(d.join("a.tckpt")).unwrap();
    bytes[40] ^= 0x10;
    std::fs::write(d.join("bad.tckpt"), bytes).unwrap();
    let out = tckpt(d, &["verify", "bad.tckpt"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.tckpt"));
}

#[test]
fn inspect_lists_every_tensor_of_our_files_without_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_checkpoint(&d.join("a.safetensors"));
    assert!(tckpt(d, &["convert", "a.safetensors", "a.tckpt"]).status.success());
    for file in ["a.safetensors", "a.tckpt"] {
        let out = tckpt(d, &["inspect", "--json", "--tensors", file]);
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let list = j["tensor_list"].as_array().unwrap();
        let row = |n: &str| list.iter().find(|t| t["name"] == n).unwrap_or_else(|| panic!("{file}: no {n}")).clone();
        assert_eq!(list.len(), 3, "{file}");
        assert_eq!(
            row("fc.weight"),
            serde_json::json!({"name": "fc.weight", "dtype": "F32", "shape": [8, 8], "bytes": 256, "role": "model"})
        );
        assert_eq!(row("optimizer/fc.bias/exp_avg")["role"], "optimizer");
        assert_eq!((j["optimizer_tensors"].as_u64(), j["optimizer_bytes"].as_u64()), (Some(1), Some(32)));
        let o = &j["optimizer"];
        assert_eq!((o["source"].as_str(), o["kind"].as_str()), (Some("train"), Some("adamw")), "{file}");
        assert_eq!((o["parameters_with_state"].as_u64(), &o["slots"]), (Some(1), &serde_json::json!({"exp_avg": 1})));

        let out = tckpt(d, &["inspect", "--tensors", file]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.lines().any(|l| l.starts_with("fc.bias ") && l.contains("F32") && l.ends_with("[8]")), "{text}");
        assert!(text.contains("adamw in train: state for 1 parameters (exp_avg ×1)"), "{text}");
    }
    // A damaged tensor does not stop the listing: nothing is read.
    let mut bytes = std::fs::read(d.join("a.safetensors")).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(d.join("b.safetensors"), bytes).unwrap();
    assert!(tckpt(d, &["inspect", "--tensors", "b.safetensors"]).status.success());
    assert_eq!(tckpt(d, &["verify", "b.safetensors"]).status.code(), Some(1));
}

/// Our checkpoint at `from` rewritten with its metadata edited by `edit` (the checksums left
/// as they are unless `edit` changes them), to `to`.
fn rewrite_metadata(from: &Path, to: &Path, edit: impl FnOnce(&mut std::collections::HashMap<String, String>)) {
    let bytes = std::fs::read(from).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = header.metadata().clone().unwrap();
    edit(&mut metadata);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    std::fs::write(to, safetensors::serialize(st.tensors(), Some(metadata)).unwrap()).unwrap();
}

/// Issue #21 item 11, a format downgrade: a version-2 file with its metadata checksum removed,
/// its version set back to 1 and its epoch forged verified as "metadata checked against their
/// checksums". A version-1 file reads, but is reported as "v1: metadata not covered"; one
/// still holding a key only version 2 writes is refused as altered.
#[test]
fn a_v1_downgrade_with_a_forged_epoch_is_never_reported_as_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_checkpoint(&d.join("a.safetensors"));
    let downgrade = |m: &mut std::collections::HashMap<String, String>| {
        m.remove("metadata_xxh3");
        m.insert("format_version".into(), "1".into());
        m.insert("epoch".into(), "9".into());
    };
    rewrite_metadata(&d.join("a.safetensors"), &d.join("v1.safetensors"), |m| {
        downgrade(m);
        m.remove("batch_size");
    });
    let out = tckpt(d, &["verify", "v1.safetensors"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("v1: metadata not covered") && said.contains("3 tensors checked"), "{said}");
    assert!(!said.contains("is sound") && !said.contains("metadata checked"), "{said}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("covered by no checksum"));

    let out = tckpt(d, &["inspect", "--json", "v1.safetensors"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&j["format_version"], &j["epoch"], &j["metadata_covered"]), (&1.into(), &9.into(), &false.into()));
    let out = tckpt(d, &["inspect", "v1.safetensors"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("v1: metadata not covered"));
    let out = tckpt(d, &["inspect", "--json", "a.safetensors"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&j["format_version"], &j["metadata_covered"]), (&2.into(), &true.into()));

    // Keeping `batch_size` (version 2 on) gives the downgrade away.
    rewrite_metadata(&d.join("a.safetensors"), &d.join("v1b.safetensors"), downgrade);
    let out = tckpt(d, &["verify", "v1b.safetensors"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("metadata fails its checksum"));

    // Converted, it is written (and sealed) as this version's file.
    assert!(tckpt(d, &["convert", "v1.safetensors", "v2.tckpt"]).status.success());
    let out = tckpt(d, &["inspect", "--json", "v2.tckpt"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&j["format_version"], &j["metadata_covered"]), (&2.into(), &true.into()));
}

/// Issue #17: `train-ckpt` wrote ANSI colour codes into pipes and files. A warning (a
/// safetensors file named `.pt`) piped to the test: plain, unless `CLICOLOR_FORCE` asks for
/// colour (which shows the check would see it), and `NO_COLOR` wins over that.
#[test]
fn logs_into_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_checkpoint(&d.join("a.pt"));
    let run = |vars: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_train-ckpt"));
        cmd.current_dir(d).args(["inspect", "a.pt"]).env_remove("NO_COLOR").env_remove("CLICOLOR_FORCE");
        let out = cmd.envs(vars.iter().copied()).output().unwrap();
        assert!(out.status.success());
        let log = String::from_utf8(out.stderr).unwrap();
        assert!(log.contains("the name says"), "{log}");
        assert!(!String::from_utf8(out.stdout).unwrap().contains('\x1b'));
        log.contains("\x1b[")
    };
    assert!(!run(&[]));
    assert!(run(&[("CLICOLOR_FORCE", "1")]));
    assert!(!run(&[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")]));
}

/// A tensor made when a writer asks for its bytes (so the test process never holds the
/// whole checkpoint, whose resident size a child would inherit at fork).
struct Made {
    seed: u32,
    shape: Vec<usize>,
}

impl safetensors::View for &Made {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let n = self.shape.iter().product::<usize>() as u32;
        (0..n).flat_map(|i| ((i ^ self.seed) as f32).to_le_bytes()).collect::<Vec<u8>>().into()
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 4
    }
}

/// `convert` streams: it holds one tensor at a time, not the checkpoint. Six tensors of
/// 16 MiB (96 MiB) convert, each way, with a peak resident size well under the whole.
#[test]
fn convert_holds_one_tensor_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let made: Vec<(String, Made)> =
        (0..6).map(|i| (format!("layer{i}.weight"), Made { seed: i, shape: vec![2048, 2048] })).collect();
    let views: Vec<(&str, &Made)> = made.iter().map(|(n, m)| (n.as_str(), m)).collect();
    let none = std::cell::RefCell::new(None);
    let meta = Meta::sample("adamw", false).to_map();
    train_ckpt::write::write_checkpoint_streamed(&d.join("big.safetensors"), &views, meta, false, &none).unwrap();
    for (from, to) in [("big.safetensors", "big.tckpt"), ("big.tckpt", "again.safetensors")] {
        let child = Command::new(env!("CARGO_BIN_EXE_train-ckpt"))
            .args(["convert"])
            .arg(d.join(from))
            .arg(d.join(to))
            .spawn()
            .unwrap();
        let mut status = 0;
        // SAFETY: plain out-parameters for our own child, waited for once.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
        assert_eq!(pid, child.id() as i32);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{from} -> {to}: status {status}");
        let peak_mib = usage.ru_maxrss / 1024;
        assert!(peak_mib < 64, "{from} -> {to}: peak {peak_mib} MiB for a 96 MiB checkpoint");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_train-ckpt"))
        .args(["verify"])
        .arg(d.join("again.safetensors"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

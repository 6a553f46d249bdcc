//! One file, one verdict: `ckpt verify`, `ckpt inspect`, `plan --checkpoint` and `--resume`
//! read every checkpoint through the same reader, so they agree on what it is. A table of
//! files (ours, foreign, PyTorch's, damaged, not a file at all) against every command.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{quick_sets, with_sets};

/// What `ckpt verify` says of a file.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verify {
    /// Exit 0, every checksum checked.
    Sound,
    /// Exit 0, read, but nothing to check against.
    NotChecked,
    /// Exit non-zero.
    Fails,
}

/// The expected verdicts for one file.
struct Row {
    file: &'static str,
    verify: Verify,
    /// `ckpt inspect` and `plan --checkpoint` read headers only: they accept a file whose
    /// tensor bytes are damaged, and say nothing about its soundness.
    inspect_and_plan: bool,
    resume: bool,
}

const TABLE: &[Row] = &[
    Row { file: "ours.safetensors", verify: Verify::Sound, inspect_and_plan: true, resume: true },
    Row { file: "ours.tckpt", verify: Verify::Sound, inspect_and_plan: true, resume: true },
    Row { file: "foreign.safetensors", verify: Verify::NotChecked, inspect_and_plan: true, resume: true },
    Row { file: "guide.pth", verify: Verify::NotChecked, inspect_and_plan: true, resume: true },
    Row { file: "state_dict.pt", verify: Verify::NotChecked, inspect_and_plan: true, resume: true },
    Row { file: "truncated.safetensors", verify: Verify::Fails, inspect_and_plan: false, resume: false },
    Row { file: "truncated.tckpt", verify: Verify::Fails, inspect_and_plan: false, resume: false },
    Row { file: "flipped-tensor.safetensors", verify: Verify::Fails, inspect_and_plan: true, resume: false },
    Row { file: "flipped-epoch.safetensors", verify: Verify::Fails, inspect_and_plan: false, resume: false },
    Row { file: "empty.pt", verify: Verify::Fails, inspect_and_plan: false, resume: false },
    Row { file: "fifo.safetensors", verify: Verify::Fails, inspect_and_plan: false, resume: false },
];

/// Makes every file of the table in `d`.
fn corpus(d: &Path, data: &Path) {
    common::make_dataset(data, 256, 64);
    let mut cmd = common::train(d);
    with_sets(&mut cmd, &quick_sets(data))
        .args(["--set", "training.epochs=1", "--output-dir", "run"])
        .assert()
        .success();
    let ours = std::fs::read(d.join("run/checkpoints/latest.safetensors")).unwrap();
    std::fs::write(d.join("ours.safetensors"), &ours).unwrap();
    common::train(d).args(["ckpt", "convert", "ours.safetensors", "ours.tckpt"]).assert().success();

    // A file as `safetensors.torch.save_file` writes it: the weights, no metadata.
    let st = safetensors::SafeTensors::deserialize(&ours).unwrap();
    let weights: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().filter(|(n, _)| !n.starts_with("optimizer/")).collect();
    std::fs::write(d.join("foreign.safetensors"), safetensors::serialize(weights, None).unwrap()).unwrap();

    common::run_python(&common::repo().join("tests/reference/make_pytorch_checkpoints.py"), &[d.to_str().unwrap()]);
    let status = std::process::Command::new(common::python())
        .args(["-c", &format!("import torch; torch.save({{}}, '{}')", d.join("empty.pt").display())])
        .status()
        .unwrap();
    assert!(status.success());

    std::fs::write(d.join("truncated.safetensors"), &ours[..ours.len() - 100]).unwrap();
    let tckpt = std::fs::read(d.join("ours.tckpt")).unwrap();
    std::fs::write(d.join("truncated.tckpt"), &tckpt[..tckpt.len() / 2]).unwrap();
    let mut flipped = ours.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x40;
    std::fs::write(d.join("flipped-tensor.safetensors"), &flipped).unwrap();
    // The attack from the hardening report: a resume that skips epochs.
    let text = String::from_utf8_lossy(&ours).into_owned();
    let at = text.find("\"epoch\":\"1\"").expect("the header records epoch 1") + "\"epoch\":\"".len();
    let mut forged = ours.clone();
    forged[at] = b'9';
    std::fs::write(d.join("flipped-epoch.safetensors"), &forged).unwrap();
    let status = std::process::Command::new("mkfifo").arg(d.join("fifo.safetensors")).status().unwrap();
    assert!(status.success());
}

#[test]
fn every_command_gives_one_file_the_same_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    let (d, data) = (tmp.path(), tmp.path().join("data"));
    corpus(d, &data);
    let limit = Duration::from_secs(120);
    for row in TABLE {
        let verify = common::train(d).args(["ckpt", "verify", row.file]).timeout(limit).output().unwrap();
        let said = String::from_utf8_lossy(&verify.stdout).into_owned() + &String::from_utf8_lossy(&verify.stderr);
        let found = match (verify.status.success(), said.contains("is sound")) {
            (true, true) => Verify::Sound,
            (true, false) => Verify::NotChecked,
            (false, _) => Verify::Fails,
        };
        assert_eq!(found, row.verify, "ckpt verify {}: {said}", row.file);
        if row.verify == Verify::NotChecked {
            assert!(said.contains("not checked"), "{said}");
        }

        let inspect = common::train(d).args(["ckpt", "inspect", "--json", row.file]).timeout(limit).output().unwrap();
        assert_eq!(inspect.status.success(), row.inspect_and_plan, "ckpt inspect {}: {inspect:?}", row.file);
        let mut plan = common::train(d);
        plan.args(["plan", "--json", "--checkpoint", row.file]);
        let plan = with_sets(&mut plan, &quick_sets(&data)).timeout(limit).output().unwrap();
        assert_eq!(plan.status.success(), row.inspect_and_plan, "plan --checkpoint {}: {plan:?}", row.file);

        let out = format!("resume-{}", row.file);
        let mut resume = common::train(d);
        with_sets(&mut resume, &quick_sets(&data));
        let resume = resume
            .args(["--set", "training.epochs=4", "--resume", row.file, "--output-dir", &out])
            .timeout(limit)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&resume.stderr);
        assert_eq!(resume.status.success(), row.resume, "--resume {}: {log}", row.file);
        if row.resume && row.verify == Verify::NotChecked {
            assert!(log.contains("not a train checkpoint"), "a weights-only start is said in the log: {log}");
        }
        if !row.resume {
            assert!(log.contains(row.file), "the error names the file: {log}");
            assert!(!d.join(&out).exists(), "a refused resume leaves no run folder behind");
        }
    }
}

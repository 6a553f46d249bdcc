//! Users' own models, built by code nobody here wrote (torchvision), exported with
//! `torch.jit.script` and trained by `train`: the loss falls, stop + resume is bit-identical
//! to an uninterrupted run (BatchNorm buffers included), the checkpoint loads back into the
//! Python model with `strict=True` and gives the logits and validation loss `train` saw, and
//! fine-tuning starts from existing weights (`--init-from`) with differences reported.

mod common;

use std::path::Path;

use train::checkpoint::CheckpointFile;
use train::metrics::MetricsLog;

/// The settings that train the exported resnet18 on its image data.
const RESNET18: [&str; 5] = [
    "run.device=cpu",
    "model.kind=torchscript",
    "model.torchscript.path=resnet18.pt",
    "data.kind=tensors",
    "data.path=images.safetensors",
];

/// `train` in `d`, into the folder `out`, with each of `sets` as a `--set`.
fn train_in(d: &Path, out: &str, sets: &[&str]) -> assert_cmd::Command {
    let mut cmd = common::train(d);
    cmd.args(["--output-dir", out]);
    common::with_sets(&mut cmd, sets);
    cmd
}

/// The stderr of `cmd`, which must succeed.
fn succeeds(mut cmd: assert_cmd::Command) -> String {
    let o = cmd.assert().success().get_output().clone();
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `train` on the exported resnet18 and its image data in `d`, into `d/out`; returns stderr.
fn run(d: &Path, out: &str, extra: &[&str]) -> String {
    let sets = [&RESNET18[..], &["training.batch_size=16", "training.epochs=2", "training.optimizer.lr=1e-3"]].concat();
    let mut cmd = train_in(d, out, &sets);
    cmd.args(extra);
    succeeds(cmd)
}

fn export(d: &Path) {
    common::run_python(&common::repo().join("tests/reference/export_vision.py"), &[d.to_str().unwrap()]);
}

#[test]
fn torchvision_resnet18_trains_resumes_exactly_and_loads_back_into_torchvision() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    export(d);
    run(d, "full", &[]);
    let m = MetricsLog::read(&d.join("full/metrics.jsonl")).unwrap();
    assert!(m[1].train_loss < m[0].train_loss, "the loss falls: {m:?}");

    // 144 examples in batches of 16: 9 steps an epoch. Stop inside the second, then resume.
    run(d, "cut", &["--set", "training.max_steps=13"]);
    let resumed = run(d, "cut", &[]);
    assert!(resumed.contains("resumed"), "{resumed}");
    let a = CheckpointFile::open(&d.join("full/checkpoints/latest.safetensors")).unwrap();
    let b = CheckpointFile::open(&d.join("cut/checkpoints/latest.safetensors")).unwrap();
    assert_eq!(a.names(), b.names());
    let buffers: Vec<&str> =
        a.names().into_iter().filter(|n| n.contains("running_") || n.ends_with("num_batches_tracked")).collect();
    assert_eq!(buffers.len(), 60, "every BatchNorm's running_mean, running_var and num_batches_tracked: {buffers:?}");
    for name in a.names() {
        assert!(a.read(name).unwrap() == b.read(name).unwrap(), "{name} differs after stop + resume");
    }

    // torchvision's own resnet18 takes the checkpoint strictly, and scores what `train` logged.
    let val_loss = m[1].val_loss.to_string();
    let ckpt = d.join("full/checkpoints/latest.safetensors");
    let out = common::run_python(
        &common::repo().join("tests/reference/check_vision.py"),
        &[
            ckpt.to_str().unwrap(),
            d.join("resnet18.pt").to_str().unwrap(),
            d.join("images.safetensors").to_str().unwrap(),
            "0.1",
            &val_loss,
        ],
    );
    assert!(out.contains("val_loss"), "{out}");
}

#[test]
fn fine_tuning_starts_from_torchvision_and_hugging_face_style_weights() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    export(d);
    // A torchvision-style `{'model_state_dict': ...}` file of the same architecture: exact.
    let log = run(d, "pth", &["--init-from", "resnet18_init.pth", "--init-strict", "--set", "training.epochs=1"]);
    assert!(log.contains("initialised 122 tensors from resnet18_init.pth: 0 not in the file"), "{log}");
    let m = MetricsLog::read(&d.join("pth/metrics.jsonl")).unwrap();
    assert_eq!(m.len(), 1, "a fresh run from step 0: {m:?}");
    let latest = CheckpointFile::open(&d.join("pth/checkpoints/latest.safetensors")).unwrap();
    assert_eq!(latest.meta().unwrap().step(), 9);

    // A Hugging Face-style safetensors file (bf16, `{"format": "pt"}`) of a 1000-class
    // model saved through DistributedDataParallel: the head's shape differs, one tensor is
    // missing and one is extra. Loosely, the rest loads and the table says what did not.
    let script = "import torch, torchvision\n\
        from safetensors.torch import save_file\n\
        torch.manual_seed(7)\n\
        sd = torchvision.models.resnet18(num_classes=1000).state_dict()\n\
        sd = {'module.' + k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}\n\
        del sd['module.layer4.1.bn2.bias']\n\
        sd['module.aux.weight'] = torch.zeros(3)\n\
        save_file(sd, 'hf.safetensors', metadata={'format': 'pt'})\n";
    let status = std::process::Command::new(common::python()).current_dir(d).args(["-c", script]).status().unwrap();
    assert!(status.success());
    let log = run(d, "hf", &["--init-from", "hf.safetensors", "--set", "training.epochs=1"]);
    for expected in [
        "initialised 119 tensors from hf.safetensors: 1 not in the file, 1 not in the model, 2 of another shape",
        "converted from BF16",
        "`module.` prefix removed",
        "shape differs  fc.weight",
        "not in file    layer4.1.bn2.bias",
        "not in model   module.aux.weight",
    ] {
        assert!(log.contains(expected), "missing {expected:?} in:\n{log}");
    }
    // The loaded weights are the file's (in bf16), moved by at most 9 Adam steps of 1e-3; a
    // fresh initialisation differs from them by about 0.1 somewhere among conv1's 9,408.
    let check = "import torch\n\
        from safetensors.torch import load_file\n\
        f = load_file('hf.safetensors'); c = load_file('hf/checkpoints/epoch-0001.safetensors')\n\
        d = (c['conv1.weight'] - f['module.conv1.weight'].float()).abs().max().item()\n\
        assert d < 0.03, d\n\
        print('ok', d)\n";
    let out = std::process::Command::new(common::python()).current_dir(d).args(["-c", check]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Strictly, the same file is refused before anything is written, with the same table.
    let mut cmd = train_in(d, "strict", &RESNET18);
    cmd.args(["--init-from", "hf.safetensors", "--init-strict"]);
    // Exit 2 (issue 17, item 10): the command's fault, nothing written.
    let out = cmd.assert().code(2).get_output().clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match the model (model.init_strict is on)") && err.contains("fc.weight"), "{err}");
    assert!(!d.join("strict/checkpoints").exists() || common::files_under(&d.join("strict/checkpoints")).is_empty());
}

/// Trains a Hugging Face model exported by tests/reference/hf_models.py: uninterrupted, and
/// stopped mid-epoch then resumed; checks the loss falls, the two end bit-identical, and the
/// checkpoint loads back into the Hugging Face model strictly with the same logits and loss.
fn hugging_face_round_trip(d: &Path, name: &str, sets: &[&str]) {
    let model = format!("model.torchscript.path={name}.pt");
    let data = format!("data.path={name}.npz");
    let base = [
        "run.device=cpu",
        "model.kind=torchscript",
        &model,
        "data.kind=npz",
        &data,
        "training.batch_size=16",
        "training.epochs=3",
        "training.optimizer.lr=3e-3",
    ];
    let run = |out: &str, extra: &[&str]| succeeds(train_in(d, out, &[&base[..], sets, extra].concat()));
    let full = format!("{name}-full");
    let cut = format!("{name}-cut");
    run(&full, &[]);
    let m = MetricsLog::read(&d.join(&full).join("metrics.jsonl")).unwrap();
    assert!(m[2].train_loss < 0.8 * m[0].train_loss, "{name}: the loss falls: {m:?}");
    // 173 training examples in batches of 16: 11 steps an epoch; stop inside the second.
    run(&cut, &["training.max_steps=15"]);
    assert!(run(&cut, &[]).contains("resumed"));
    let a = CheckpointFile::open(&d.join(&full).join("checkpoints/latest.safetensors")).unwrap();
    let b = CheckpointFile::open(&d.join(&cut).join("checkpoints/latest.safetensors")).unwrap();
    assert_eq!(a.names(), b.names());
    for tensor in a.names() {
        assert!(a.read(tensor).unwrap() == b.read(tensor).unwrap(), "{name}: {tensor} differs after stop + resume");
    }
    let ckpt = d.join(&full).join("checkpoints/latest.safetensors");
    let out = common::run_python(
        &common::repo().join("tests/reference/hf_models.py"),
        &[
            "check",
            name,
            d.join(format!("{name}.pt")).to_str().unwrap(),
            ckpt.to_str().unwrap(),
            d.join(format!("{name}.npz")).to_str().unwrap(),
            "0.1",
            &m[2].val_loss.to_string(),
        ],
    );
    assert!(out.contains("max_logit_diff"), "{out}");
}

#[test]
fn hugging_face_bert_and_gpt2_train_on_their_own_loss_from_npz_and_load_back_strictly() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    common::run_python(&common::repo().join("tests/reference/hf_models.py"), &["export", d.to_str().unwrap()]);
    // A classifier taking two named int64 inputs, and its labels, returning {"loss", "logits"}.
    hugging_face_round_trip(
        d,
        "bert",
        &[
            "model.torchscript.inputs=[input_ids, attention_mask]",
            "model.torchscript.labels=labels",
            "data.targets=labels",
        ],
    );
    // A language model given its own input ids as labels (it shifts them itself).
    hugging_face_round_trip(
        d,
        "gpt2",
        &["model.torchscript.inputs=[input_ids]", "model.torchscript.labels=labels", "data.targets=input_ids"],
    );
}

#[test]
fn an_image_folder_of_png_and_jpeg_files_trains_and_a_broken_file_is_named() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    // torchvision's ImageFolder layout, written by Pillow: three classes (numbered in sorted
    // order: ant, bee, cat), each a colour, 40x48 images resized to 32x32; PNG and JPEG mixed.
    let script = "import os, random\n\
        from PIL import Image\n\
        random.seed(0)\n\
        colours = {'cat': (220, 40, 40), 'ant': (40, 220, 40), 'bee': (40, 40, 220)}\n\
        for split, n in (('train', 24), ('val', 6)):\n\
        \x20   for c, rgb in colours.items():\n\
        \x20       os.makedirs(f'imgs/{split}/{c}', exist_ok=True)\n\
        \x20       for i in range(n):\n\
        \x20           noisy = tuple(max(0, min(255, v + random.randint(-60, 60))) for v in rgb)\n\
        \x20           ext = 'png' if i % 2 else 'jpg'\n\
        \x20           Image.new('RGB', (48, 40), noisy).save(f'imgs/{split}/{c}/{i:03}.{ext}')\n\
        open('imgs/train/cat/notes.txt', 'w').write('not an image')\n";
    let status = std::process::Command::new(common::python()).current_dir(d).args(["-c", script]).status().unwrap();
    assert!(status.success());
    let sets = [
        "run.device=cpu",
        "data.kind=image_folder",
        "data.dir=imgs",
        "data.image_size=[32, 32]",
        "model.kind=cnn",
        "model.cnn={channels: [8, 16], hidden: 32}",
        "training.batch_size=8",
        "training.epochs=4",
        "training.optimizer.lr=3e-3",
    ];
    let log = succeeds(train_in(d, "img", &sets));
    assert!(log.contains("classes=3 train=72 val=18"), "{log}");
    let m = MetricsLog::read(&d.join("img/metrics.jsonl")).unwrap();
    assert!(m[3].train_loss < 0.5 * m[0].train_loss && m[3].val_accuracy > 0.9, "{m:?}");
    // A file with an image's extension that is not one is refused, named.
    std::fs::write(d.join("imgs/train/bee/broken.jpg"), b"\xff\xd8\xff not really a jpeg").unwrap();
    let out = train_in(d, "broken", &sets).assert().failure().get_output().clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.jpg") && err.contains("cannot decode"), "{err}");
}

/// Regression (issue 17, item 2): a MiniLM-style file of the bare `BertModel` lacks the
/// `bert.` of `BertForSequenceClassification`; `--init-from` loaded 0 of its tensors, said
/// so in a WARN above a long table, and trained from scratch with exit 0. Now it is
/// refused (exit 2) with the mapping that fits, and with that mapping it loads.
#[test]
fn init_from_a_base_model_without_the_task_prefix_is_refused_then_mapped() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    common::run_python(&common::repo().join("tests/reference/hf_models.py"), &["export", d.to_str().unwrap()]);
    let script = "import sys; sys.path.insert(0, sys.argv[1])\n\
        import hf_models, transformers\n\
        from safetensors.torch import save_file\n\
        base = transformers.BertModel(hf_models.bert().config, add_pooling_layer=True)\n\
        save_file({k: v.contiguous() for k, v in base.state_dict().items()}, 'minilm.safetensors')\n";
    let reference = common::repo().join("tests/reference");
    let status = std::process::Command::new(common::python())
        .current_dir(d)
        .args(["-c", script, reference.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let sets = [
        "run.device=cpu",
        "model.kind=torchscript",
        "model.torchscript.path=bert.pt",
        "model.torchscript.inputs=[input_ids, attention_mask]",
        "model.torchscript.labels=labels",
        "data.kind=npz",
        "data.path=bert.npz",
        "data.targets=labels",
        "training.batch_size=16",
        "training.epochs=1",
    ];
    let mut cmd = train_in(d, "refused", &sets);
    cmd.args(["--init-from", "minilm.safetensors"]);
    let out = cmd.assert().code(2).get_output().clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("would load 0 of the model's") && err.contains(r#"model.init_prefix_map: {"": "bert."}"#),
        "{err}"
    );
    assert!(!d.join("refused").exists(), "nothing written");

    let mut cmd = train_in(d, "mapped", &[&sets[..], &[r#"model.init_prefix_map={"": "bert."}"#]].concat());
    cmd.args(["--init-from", "minilm.safetensors"]);
    let log = succeeds(cmd);
    // Every tensor but the classifier's weight and bias (and the non-persistent ids) loads.
    assert!(log.contains("not in the file: classifier.bias, classifier.weight"), "{log}");
}

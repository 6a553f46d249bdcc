//! A `torch.save` file's optimizer state and scalars, read without libtorch, against files
//! written by real `torch.save` (tests/reference/make_pytorch_optimizers.py: AdamW over two
//! param groups, Adam with steps stored three ways, a bare SGD-with-momentum state dict).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;
use train_ckpt::{CheckpointFile, Error, PytorchOptimizer};

mod common;

use common::tckpt;

/// The reference files, written once per test run (torch takes seconds to import) into a
/// fresh folder under the target directory, and expected.json. Tests only read them.
fn files() -> (&'static Path, &'static Value) {
    static FILES: OnceLock<(PathBuf, Value)> = OnceLock::new();
    let (dir, expected) = FILES.get_or_init(|| {
        let dir = common::reference_files("make_pytorch_optimizers.py", "pytorch_optimizer");
        let expected = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        (dir, expected)
    });
    (dir.as_path(), expected)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn torch_dtype(d: safetensors::Dtype) -> &'static str {
    match d {
        safetensors::Dtype::F32 => "torch.float32",
        safetensors::Dtype::I64 => "torch.int64",
        other => panic!("unexpected dtype {other:?}"),
    }
}

/// Everything the file's optimizer state dict holds matches what Python saved: the param
/// groups, each parameter's step and every state tensor's layout and bytes, read through
/// `read_into` by the entry's name.
fn assert_matches(file: &CheckpointFile, opt: &PytorchOptimizer, expected: &Value) {
    let groups = expected["param_groups"].as_array().unwrap();
    assert_eq!(opt.param_groups.len(), groups.len());
    for (g, e) in opt.param_groups.iter().zip(groups) {
        let params: Vec<usize> = e["params"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(g.params, params);
        assert_eq!(g.lr, e["lr"].as_f64());
        assert_eq!(g.eps, e["eps"].as_f64());
        assert_eq!(g.weight_decay, e["weight_decay"].as_f64());
        assert_eq!(g.momentum, e["momentum"].as_f64());
        assert_eq!(g.betas, e["betas"].as_array().map(|b| (b[0].as_f64().unwrap(), b[1].as_f64().unwrap())));
        for (k, v) in e.as_object().unwrap() {
            if !["params", "lr", "eps", "weight_decay", "momentum", "betas"].contains(&k.as_str()) {
                assert_eq!(g.other.get(k), Some(v), "param group key `{k}`");
            }
        }
    }
    let state = expected["state"].as_object().unwrap();
    let indices: Vec<usize> = state.keys().map(|k| k.parse().unwrap()).collect();
    assert_eq!(opt.state.keys().copied().collect::<Vec<_>>(), indices);
    for (index, e) in state {
        let s = &opt.state[&index.parse::<usize>().unwrap()];
        assert_eq!(s.step, e["step"].as_f64(), "parameter {index}'s step");
        let tensors = e["tensors"].as_object().unwrap();
        let slots: Vec<&String> = tensors.keys().filter(|k| *k != "step").collect();
        assert_eq!(s.tensors.keys().collect::<Vec<_>>(), slots, "parameter {index}'s slots");
        for (slot, entry) in &s.tensors {
            let t = &tensors[slot];
            let shape: Vec<usize> =
                t["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            assert_eq!(entry.shape, shape, "{}", entry.name);
            assert_eq!(torch_dtype(entry.dtype), t["dtype"], "{}", entry.name);
            let mut buf = vec![0u8; entry.bytes as usize];
            file.read_into(&entry.name, &mut buf).unwrap();
            assert_eq!(hex(&buf), t["hex"], "{}", entry.name);
        }
    }
}

/// `(name, shape)` pairs from expected.json's `[[name, shape], ...]` or parallel lists.
fn params(names: &Value, shapes: Option<&Value>) -> Vec<(String, Vec<usize>)> {
    let shape = |v: &Value| v.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect::<Vec<_>>();
    match shapes {
        Some(shapes) => names
            .as_array()
            .unwrap()
            .iter()
            .zip(shapes.as_array().unwrap())
            .map(|(n, s)| (n.as_str().unwrap().to_string(), shape(s)))
            .collect(),
        None => names.as_array().unwrap().iter().map(|p| (p[0].as_str().unwrap().to_string(), shape(&p[1]))).collect(),
    }
}

fn views(p: &[(String, Vec<usize>)]) -> Vec<(&str, &[usize])> {
    p.iter().map(|(n, s)| (n.as_str(), s.as_slice())).collect()
}

#[test]
fn adamw_state_over_two_param_groups_is_read_and_matched_in_group_order() {
    let (dir, expected) = files();
    let expected = &expected["adamw.pth"];
    let path = dir.join("adamw.pth");
    let file = CheckpointFile::open(&path).unwrap();
    assert_eq!(file.entries().len(), 11, "the model's weights and BatchNorm buffers load as before");
    let opt = file.pytorch_optimizer().unwrap().expect("the file holds optimizer_state_dict");
    assert_eq!(opt.key.as_deref(), Some("optimizer_state_dict"));
    assert_matches(&file, &opt, expected);
    assert_eq!(opt.param_groups[0].weight_decay, Some(0.05));
    assert_eq!(opt.param_groups[0].betas, Some((0.8, 0.95)));
    assert_eq!(opt.param_groups[1].other["decoupled_weight_decay"], true);

    // In the optimizer's numbering (the groups' order) every parameter lines up; the frozen
    // Linear's two parameters have no state.
    let in_group_order = params(&expected["names"], Some(&expected["shapes"]));
    let assigned = opt.assign(&views(&in_group_order)).unwrap();
    let names: Vec<&str> = assigned.iter().map(|a| a.name).collect();
    assert_eq!(names, ["0.weight", "4.weight", "5.weight", "0.bias", "1.weight", "1.bias", "4.bias", "5.bias"]);
    let fresh: Vec<&str> = assigned.iter().filter(|a| a.state.is_none()).map(|a| a.name).collect();
    assert_eq!(fresh, ["5.weight", "5.bias"]);
    assert_eq!(assigned.iter().map(|a| a.group).collect::<Vec<_>>(), [0, 0, 0, 1, 1, 1, 1, 1]);
    let a = &assigned[1];
    assert_eq!((a.index, a.state.unwrap().tensors["exp_avg"].shape.as_slice()), (1, &[5, 64][..]));

    // In named_parameters() order it cannot be matched, and the error says where.
    let named = params(&expected["named_parameters"], None);
    let err = opt.assign(&views(&named)).unwrap_err();
    assert!(matches!(err, Error::OptimizerMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("adamw.pth") && msg.contains("`0.bias`") && msg.contains("[5, 64]"), "{msg}");
    // Nor to a model with another parameter count.
    let err = opt.assign(&views(&named[..7])).unwrap_err().to_string();
    assert!(err.contains("list 8 parameters, the model has 7"), "{err}");
}

#[test]
fn adam_steps_stored_as_int_float_or_tensor_read_as_numbers() {
    let (dir, expected) = files();
    let expected = &expected["adam.pth"];
    let file = CheckpointFile::open(&dir.join("adam.pth")).unwrap();
    let opt = file.pytorch_optimizer().unwrap().unwrap();
    assert_matches(&file, &opt, expected);
    let steps: Vec<Option<f64>> = opt.state.values().map(|s| s.step).collect();
    assert_eq!(steps, vec![Some(2.0); 6]);
    assert!(opt.state.values().all(|s| !s.tensors.contains_key("step") && s.tensors.len() == 2));
    // One group of model.parameters(): named_parameters() order is the optimizer's.
    let named = params(&expected["named_parameters"], None);
    let assigned = opt.assign(&views(&named)).unwrap();
    assert!(assigned.iter().enumerate().all(|(i, a)| a.index == i && a.group == 0 && a.name == named[i].0));
    assert_eq!(assigned.iter().filter(|a| a.state.is_some()).count(), 6);
}

#[test]
fn a_bare_sgd_state_dict_opens_for_its_optimizer_only() {
    let (dir, expected) = files();
    let path = dir.join("sgd.pt");
    // Not a model checkpoint: resume, convert and verify refuse it, saying why.
    let err = CheckpointFile::open(&path).err().expect("a bare optimizer state dict holds no weights").to_string();
    assert!(err.contains("sgd.pt") && err.contains("optimizer state dict but no model weights"), "{err}");

    let (file, opt) = CheckpointFile::open_pytorch_optimizer(&path).unwrap();
    assert!(file.entries().is_empty());
    assert_eq!(opt.key, None);
    assert_matches(&file, &opt, &expected["sgd.pt"]);
    let g = &opt.param_groups[0];
    assert_eq!((g.lr, g.momentum, g.weight_decay, g.betas), (Some(0.1), Some(0.9), Some(1e-4), None));
    assert_eq!((&g.other["nesterov"], &g.other["dampening"]), (&Value::Bool(true), &Value::from(0)));
    assert!(opt.state.values().all(|s| s.step.is_none() && s.tensors.keys().eq(["momentum_buffer"])));
    let named = params(&expected["sgd.pt"]["named_parameters"], None);
    assert_eq!(opt.assign(&views(&named)).unwrap().len(), 8);

    // A file without optimizer state is refused by name.
    let err = CheckpointFile::open_pytorch_optimizer(&dir.join("expected.json")).err().unwrap().to_string();
    assert!(err.contains("expected.json"), "{err}");
}

#[test]
fn a_checkpoint_without_optimizer_state_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let script = "import torch, sys; torch.save({'model_state_dict': {'w': torch.ones(2)}, 'epoch': 1}, sys.argv[1])";
    let path = dir.path().join("weights.pth");
    assert!(std::process::Command::new(common::python()).args(["-c", script]).arg(&path).status().unwrap().success());
    let file = CheckpointFile::open(&path).unwrap();
    assert_eq!(file.pytorch_optimizer().unwrap(), None);
    assert!(file.other_entries().is_empty());
    let out = tckpt(dir.path(), &["convert", "weights.pth", "weights.safetensors"]);
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("not converted"), "{out:?}");
    let err = CheckpointFile::open_pytorch_optimizer(&path).err().unwrap().to_string();
    assert!(err.contains("weights.pth") && err.contains("holds no PyTorch optimizer state"), "{err}");
}

#[test]
fn a_malformed_optimizer_state_dict_is_an_error_naming_the_file() {
    let (dir, _) = files();
    let path = dir.join("broken.pth");
    // The weights still load; the optimizer state is refused when asked for.
    let file = CheckpointFile::open(&path).unwrap();
    let err = file.pytorch_optimizer().unwrap_err();
    assert!(matches!(err, Error::Malformed { .. }));
    let msg = err.to_string();
    assert!(msg.contains("broken.pth") && msg.contains("param_groups[0] has no `params` list"), "{msg}");
}

#[test]
fn a_loss_saved_as_a_0d_tensor_reads_as_a_number() {
    let (dir, _) = files();
    let path = dir.join("adamw.pth");
    let file = CheckpointFile::open(&path).unwrap();
    // 'loss': torch.tensor(0.25) and 'val_loss': a float16 0-d tensor.
    let meta = file.meta_or_imported();
    assert_eq!((meta.train_loss, meta.val_loss, meta.epoch()), (0.25, 0.125, 4));
    let report = train_ckpt::tools::inspect(&path, false).unwrap();
    assert_eq!((report.train_loss, report.val_loss, report.epoch), (Some(0.25), Some(0.125), Some(4)));
    // And as a Python float (adam.pth's 'loss': 0.5).
    let report = train_ckpt::tools::inspect(&dir.join("adam.pth"), false).unwrap();
    assert_eq!(report.train_loss, Some(0.5));
    // A converted file keeps it.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("adamw.safetensors");
    train_ckpt::tools::convert(&path, &out, false).unwrap();
    let meta = CheckpointFile::open(&out).unwrap().meta().unwrap().clone();
    assert_eq!((meta.train_loss, meta.val_loss), (0.25, 0.125));
}

#[test]
fn inspect_counts_a_pth_optimizer_state_and_lists_its_tensors() {
    let (dir, expected) = files();
    let d = dir;
    let out = tckpt(d, &["inspect", "--json", "--tensors", "adamw.pth"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    // 11 model tensors, 3 per parameter with state (exp_avg, exp_avg_sq, a 0-d step), the loss.
    let with_state = expected["adamw.pth"]["state"].as_object().unwrap().len();
    assert_eq!(j["optimizer_tensors"], 3 * with_state);
    assert_eq!(j["tensors"], 11 + 3 * with_state + 2);
    assert_eq!(j["has_optimizer_state"], true);
    let o = &j["optimizer"];
    assert_eq!((o["kind"].as_str(), o["source"].as_str()), (Some("adamw"), Some("optimizer_state_dict")));
    assert_eq!((o["parameters"].as_u64(), o["parameters_with_state"].as_u64()), (Some(8), Some(6)));
    assert_eq!(o["slots"], serde_json::json!({"exp_avg": 6, "exp_avg_sq": 6, "step": 6}));
    assert_eq!(o["param_groups"][0]["params"], 3);
    assert_eq!(o["param_groups"][0]["lr"], 0.003);
    let list = j["tensor_list"].as_array().unwrap();
    assert_eq!(list.len() as u64, j["tensors"].as_u64().unwrap());
    let find = |n: &str| list.iter().find(|t| t["name"] == n).unwrap_or_else(|| panic!("{n} not listed"));
    assert_eq!(find("4.weight")["shape"], serde_json::json!([5, 64]));
    assert_eq!(find("4.weight")["role"], "model");
    assert_eq!(find("1.num_batches_tracked")["dtype"], "I64");
    let t = find("optimizer_state_dict.state.1.exp_avg_sq");
    assert_eq!(
        (&t["role"], &t["dtype"], &t["bytes"]),
        (&Value::from("optimizer"), &Value::from("F32"), &Value::from(1280))
    );
    assert_eq!(find("loss")["role"], "other");
    let bytes =
        |role: &str| list.iter().filter(|t| t["role"] == role).map(|t| t["bytes"].as_u64().unwrap()).sum::<u64>();
    assert_eq!(j["optimizer_bytes"].as_u64(), Some(bytes("optimizer")));
    assert_eq!(j["model_bytes"].as_u64(), Some(bytes("model")));

    // The text form says it in one line and prints the table.
    let out = tckpt(d, &["inspect", "--tensors", "sgd.pt"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sgd in state_dict: state for 8 of 8 parameters (momentum_buffer ×8)"), "{text}");
    assert!(text.contains("momentum=0.9") && text.contains("nesterov=true"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("state.4.momentum_buffer") && l.ends_with("[5, 64]")), "{text}");
    // Without --tensors, no list.
    let out = tckpt(d, &["inspect", "--json", "adam.pth"]);
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j.get("tensor_list").is_none());
    assert_eq!(j["optimizer"]["kind"], "adam");
}

/// Issue #17: `convert` said "the PyTorch optimizer state ... is not converted" of our own
/// checkpoints too, whose optimizer tensors are all converted. Only a torch.save file holding
/// an optimizer state dict is warned about.
#[test]
fn convert_warns_of_unconverted_optimizer_state_only_for_torch_save_files_holding_some() {
    let (dir, _) = files();
    let tmp = tempfile::tempdir().unwrap();
    let out = tckpt(dir, &["convert", "adamw.pth", tmp.path().join("adamw.safetensors").to_str().unwrap()]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && log.contains("PyTorch optimizer state") && log.contains("not converted"), "{log}");

    // Ours, with optimizer tensors: converted both ways without a word about them.
    let d = tmp.path();
    let w: Vec<u8> = (0..8u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![8], &w).unwrap();
    let views = [("fc.bias", &view), ("optimizer/fc.bias/exp_avg", &view)];
    let bytes = train_ckpt::write::serialize_views(d, &views, &train_ckpt::Meta::sample("adamw", true)).unwrap();
    std::fs::write(d.join("ours.safetensors"), bytes).unwrap();
    for (from, to) in [("ours.safetensors", "ours.tckpt"), ("ours.tckpt", "back.safetensors")] {
        let out = tckpt(d, &["convert", from, to]);
        assert!(out.status.success() && out.stderr.is_empty(), "{from}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let back = CheckpointFile::open(&d.join("back.safetensors")).unwrap();
    assert_eq!(back.read("optimizer/fc.bias/exp_avg").unwrap(), w);
}

//! Our optimisers against `torch.optim` on the same inputs. The reference numbers come
//! from tests/reference/optim_reference.py, run afresh with the torch virtualenv.

mod common;

use std::collections::HashMap;

use tch::{Kind, Tensor};
use train::config::{OptimizerConfig, OptimizerKind};
use train::optim::{self, Param};

/// Tolerance of a few float32 ulps: libtorch's kernels fuse `a + alpha * b` (FMA) where
/// tch binds no `alpha` and we round twice. Seen: at most 6e-8 on values of order 1.
const RTOL: f64 = 1e-6;
const ATOL: f64 = 1e-7;

fn config(case: &serde_json::Value) -> OptimizerConfig {
    let f = |k: &str, d: f64| case.get(k).and_then(|v| v.as_f64()).unwrap_or(d);
    let betas = case.get("betas").map(|b| [b[0].as_f64().unwrap(), b[1].as_f64().unwrap()]);
    let defaults = OptimizerConfig::default();
    OptimizerConfig {
        kind: match case["kind"].as_str().unwrap() {
            "sgd" => OptimizerKind::Sgd,
            "adam" => OptimizerKind::Adam,
            "adamw" => OptimizerKind::Adamw,
            other => panic!("unknown kind {other}"),
        },
        lr: f("lr", 1e-3),
        betas: betas.unwrap_or([0.9, 0.999]),
        eps: f("eps", 1e-8),
        // torch.optim's defaults where the case leaves a key out (AdamW's is 0.01).
        weight_decay: f("weight_decay", if case["kind"] == "adamw" { 1e-2 } else { 0.0 }),
        momentum: f("momentum", 0.0),
        dampening: f("dampening", 0.0),
        nesterov: case.get("nesterov").and_then(|v| v.as_bool()).unwrap_or(defaults.nesterov),
    }
}

fn assert_close(what: &str, ours: &Tensor, theirs: &Tensor) {
    let ours = ours.to_kind(Kind::Double);
    let theirs = theirs.to_kind(Kind::Double);
    assert_eq!(ours.size(), theirs.size(), "{what}: shape");
    let diff = (&ours - &theirs).abs();
    let bound = theirs.abs() * RTOL + ATOL;
    let worst = (&diff - &bound).max().double_value(&[]);
    assert!(worst <= 0.0, "{what}: max |ours - torch| = {} exceeds tolerance", diff.max().double_value(&[]));
}

#[test]
fn optimizers_match_torch_optim() {
    let dir = tempfile::tempdir().unwrap();
    common::run_python(&common::repo().join("tests/reference/optim_reference.py"), &[dir.path().to_str().unwrap()]);
    let reference: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.path().join("reference.safetensors")).unwrap().into_iter().collect();
    let cases: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("cases.json")).unwrap()).unwrap();
    let names: Vec<String> = reference.keys().filter_map(|k| k.strip_prefix("init/")).map(String::from).collect();
    let steps = (0..).take_while(|k| reference.contains_key(&format!("grad/{k}/{}", names[0]))).count();
    assert!(steps > 1 && !cases.is_empty());

    for (case, spec) in &cases {
        let params: Vec<Param> = names
            .iter()
            .map(|n| Param::whole(n.clone(), reference[&format!("init/{n}")].copy().set_requires_grad(true)))
            .collect();
        let handles: Vec<(String, Tensor)> =
            params.iter().map(|p| (p.name.clone(), p.tensor.shallow_clone())).collect();
        let mut opt = optim::build(&config(spec), params);
        for k in 0..steps {
            opt.zero_grad();
            // d/dp sum(p * g) = g exactly, so backward hands the optimiser the reference gradient.
            let loss = handles
                .iter()
                .map(|(n, p)| (p * &reference[&format!("grad/{k}/{n}")]).sum(Kind::Float))
                .reduce(|a, b| a + b)
                .unwrap();
            loss.backward();
            opt.step();
        }
        for (n, p) in &handles {
            assert_close(&format!("{case} {n}"), p, &reference[&format!("{case}/param/{n}")]);
        }
        let state: HashMap<String, Tensor> = opt.state().into_iter().collect();
        let expected: Vec<&String> = reference.keys().filter(|k| k.starts_with(&format!("{case}/state/"))).collect();
        assert_eq!(state.len(), expected.len(), "{case}: state tensors {:?} vs {expected:?}", state.keys());
        for key in expected {
            let short = key.strip_prefix(&format!("{case}/state/")).unwrap();
            let ours = state.get(short).unwrap_or_else(|| panic!("{case}: no state `{short}`"));
            assert_close(&format!("{case} state {short}"), ours, &reference[key]);
        }
    }
}

#[test]
fn state_round_trips_through_load_state() {
    let p = Tensor::from_slice(&[1.0f32, -2.0, 3.0]).set_requires_grad(true);
    let mut opt = optim::build(&OptimizerConfig::default(), vec![Param::whole("w".into(), p.shallow_clone())]);
    (&p * &p).sum(Kind::Float).backward();
    opt.step();
    let saved: HashMap<String, Tensor> = opt.state().into_iter().map(|(n, t)| (n, t.copy())).collect();
    let mut fresh = optim::build(&OptimizerConfig::default(), vec![Param::whole("w".into(), p.shallow_clone())]);
    fresh.load_state(saved.iter().map(|(n, t)| (n.clone(), t.copy())).collect()).unwrap();
    for (n, t) in fresh.state() {
        assert!(t.equal(&saved[&n]), "{n}");
    }
}

#[test]
fn load_state_names_the_mismatched_tensor() {
    let p = Tensor::zeros([3], tch::kind::FLOAT_CPU).set_requires_grad(true);
    let mut opt = optim::build(&OptimizerConfig::default(), vec![Param::whole("w".into(), p)]);
    let bad = HashMap::from([
        ("w/step".to_string(), Tensor::from(1i64)),
        ("w/exp_avg".to_string(), Tensor::zeros([4], tch::kind::FLOAT_CPU)),
        ("w/exp_avg_sq".to_string(), Tensor::zeros([3], tch::kind::FLOAT_CPU)),
    ]);
    let err = opt.load_state(bad).unwrap_err().to_string();
    assert!(err.contains("w/exp_avg"), "{err}");
    let stray = HashMap::from([("v/exp_avg".to_string(), Tensor::zeros([3], tch::kind::FLOAT_CPU))]);
    assert!(opt.load_state(stray).unwrap_err().to_string().contains("v/exp_avg"));
}

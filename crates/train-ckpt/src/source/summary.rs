//! What `ckpt inspect` reports of a checkpoint's optimizer state: ours from the
//! `optimizer/<param>/<slot>` tensors and the metadata, a PyTorch file's from its state dict.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::entry::Entry;
use super::optimizer::PytorchOptimizer;
use crate::meta::Meta;
use crate::names::optimizer_key;

/// The JSON summary of an optimizer that `ckpt inspect` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OptimizerSummary {
    /// Where the state is: `"train"` (ours, `optimizer/...` tensors), the top-level key of a
    /// `torch.save` file (`"optimizer_state_dict"`), or `"state_dict"` for a bare one.
    pub source: String,
    /// The optimizer: as recorded (ours), or for a PyTorch file as told by its state and
    /// param groups (`adam`, `adamw`, `sgd`); `null` when neither says.
    pub kind: Option<String>,
    /// Parameters the optimizer covers (a PyTorch file's param groups; `null` for ours).
    pub parameters: Option<usize>,
    /// Parameters with state.
    pub parameters_with_state: usize,
    /// Each state slot and how many parameters hold it (`exp_avg: 6`, `step: 6`).
    pub slots: BTreeMap<String, usize>,
    /// A PyTorch file's param groups: their parameter count and hyper-parameters.
    pub param_groups: Vec<serde_json::Value>,
}

impl OptimizerSummary {
    /// One line for `ckpt inspect`'s text form.
    pub fn describe(&self) -> String {
        let slots: Vec<String> = self.slots.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        let mut line = format!(
            "{} in {}: state for {}{} parameters ({})",
            self.kind.as_deref().unwrap_or("unknown optimizer"),
            self.source,
            self.parameters_with_state,
            self.parameters.map_or(String::new(), |n| format!(" of {n}")),
            if slots.is_empty() { "none".into() } else { slots.join(", ") }
        );
        for (i, g) in self.param_groups.iter().enumerate() {
            let hyper: Vec<String> = g
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| {
                    matches!(k.as_str(), "lr" | "betas" | "eps" | "weight_decay" | "momentum" | "nesterov")
                        && !v.is_null()
                })
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            line += &format!("; param_groups[{i}]: {} params {}", g["params"], hyper.join(" "));
        }
        line
    }
}

impl OptimizerSummary {
    /// The summary of a PyTorch optimizer state dict in which `steps` parameters have a
    /// `step`: its kind told by its slots and param groups.
    pub(super) fn of_pytorch(opt: &PytorchOptimizer, steps: usize) -> Self {
        let mut slots = BTreeMap::new();
        for s in opt.state.values() {
            for slot in s.tensors.keys().chain(s.other.keys()) {
                *slots.entry(slot.clone()).or_insert(0) += 1;
            }
        }
        if steps > 0 {
            slots.insert("step".into(), steps);
        }
        let has = |k: &str| slots.contains_key(k);
        let decoupled = opt.param_groups.iter().any(|g| g.other.get("decoupled_weight_decay") == Some(&true.into()));
        let kind = if has("exp_avg") && has("exp_avg_sq") {
            Some(if decoupled { "adamw" } else { "adam" })
        } else if has("momentum_buffer") || opt.param_groups.iter().any(|g| g.other.contains_key("nesterov")) {
            Some("sgd")
        } else {
            None
        };
        let param_groups = opt
            .param_groups
            .iter()
            .map(|g| {
                let mut v = serde_json::to_value(g).expect("a param group serializes");
                let fields = v.as_object_mut().expect("a struct serializes to an object");
                fields.insert("params".into(), g.params.len().into());
                // A hyper-parameter the group does not have is left out, not `null`.
                fields.retain(|_, v| !v.is_null());
                if let Some(serde_json::Value::Object(other)) = fields.remove("other") {
                    fields.extend(other);
                }
                v
            })
            .collect();
        OptimizerSummary {
            source: opt.key.clone().unwrap_or_else(|| "state_dict".into()),
            kind: kind.map(str::to_string),
            parameters: Some(opt.parameter_count()),
            parameters_with_state: opt.state.len(),
            slots,
            param_groups,
        }
    }

    /// The summary of our optimiser-state entries (`optimizer/<param>/<slot>`) among
    /// `entries`, the kind as `meta` records it; `None` when there are none.
    pub(super) fn of_ours(entries: &[Entry], meta: Option<&Meta>) -> Option<Self> {
        let ours: Vec<&str> = entries.iter().filter_map(|e| optimizer_key(&e.name)).collect();
        if ours.is_empty() {
            return None;
        }
        let mut slots = BTreeMap::new();
        let mut params = BTreeSet::new();
        for name in ours {
            let (param, slot) = name.rsplit_once('/').unwrap_or((name, ""));
            params.insert(param);
            *slots.entry(slot.to_string()).or_insert(0) += 1;
        }
        let kind = meta.and_then(|m| m.optimizer.get("kind")).and_then(|k| k.as_str()).map(str::to_string);
        Some(OptimizerSummary {
            source: "train".into(),
            kind,
            parameters: None,
            parameters_with_state: params.len(),
            slots,
            param_groups: Vec::new(),
        })
    }
}

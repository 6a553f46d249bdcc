//! A model's parameter count, computed from its configuration and the data's shapes without
//! allocating, after checking that they can make that model.

use super::config::{ModelConfig, ModelKind};
use super::error::ModelError;
use super::task::outputs_of;
use crate::data::Task;

/// The parameter count of the configured model for `task` and inputs of `input_shape`,
/// computed without allocating, after checking that the shapes can make that model.
/// TorchScript modules bring their own parameters: `Ok(0)`.
pub fn parameter_count(cfg: &ModelConfig, task: Task, input_shape: &[i64]) -> Result<u128, ModelError> {
    let incompatible = |reason: String| ModelError::Incompatible { kind: kind_name(cfg.kind), reason };
    let outputs = outputs_of(task);
    if outputs < 1 {
        return Err(incompatible(format!("the data has {outputs} outputs per example")));
    }
    let linear = |i: u128, o: u128| i * o + o;
    let outputs = outputs as u128;
    let dims_ok = !input_shape.is_empty() && input_shape.iter().all(|&d| d >= 1);
    match (cfg.kind, task) {
        (ModelKind::Torchscript, _) => Ok(0),
        (ModelKind::Gpt, Task::LanguageModel { .. }) => {
            let g = &cfg.gpt;
            if input_shape != [i64::from(g.context)] {
                return Err(incompatible(format!(
                    "gpt needs windows of model.gpt.context bytes, these are {input_shape:?}"
                )));
            }
            let d = u128::from(g.width);
            let block = 2 * d + linear(d, 3 * d) + linear(d, d) + 2 * d + linear(d, 4 * d) + linear(4 * d, d);
            Ok(outputs * d + u128::from(g.context) * d + u128::from(g.depth) * block + 2 * d)
        }
        (ModelKind::Gpt, _) => Err(incompatible("gpt needs data.kind text".into())),
        (_, Task::LanguageModel { .. }) => Err(incompatible("text data needs model.kind gpt".into())),
        (_, _) if !dims_ok => Err(incompatible(format!("inputs of shape {input_shape:?} are empty"))),
        (ModelKind::Mlp, _) => {
            let inputs: u128 =
                input_shape.iter().map(|&d| d as u128).try_fold(1u128, |a, d| a.checked_mul(d)).unwrap_or(u128::MAX);
            let widths: Vec<u128> = std::iter::once(inputs)
                .chain(cfg.mlp.hidden.iter().map(|&h| u128::from(h)))
                .chain(std::iter::once(outputs))
                .collect();
            Ok(widths
                .windows(2)
                .fold(0u128, |sum, w| sum.saturating_add(w[0].saturating_mul(w[1]).saturating_add(w[1]))))
        }
        (ModelKind::Cnn, _) => match *input_shape {
            [c, h, w] if h >= 4 && w >= 4 => {
                let (c1, c2) = (u128::from(cfg.cnn.channels[0]), u128::from(cfg.cnn.channels[1]));
                let hidden = u128::from(cfg.cnn.hidden);
                let flat = c2.saturating_mul((h / 4) as u128).saturating_mul((w / 4) as u128);
                Ok(linear(c as u128 * 9, c1)
                    .saturating_add(linear(c1 * 9, c2))
                    .saturating_add(flat.saturating_mul(hidden).saturating_add(hidden))
                    .saturating_add(linear(hidden, outputs)))
            }
            [_, h, w] => Err(incompatible(format!(
                "cnn pools twice by 2, so it needs images of at least 4x4, these are {h}x{w}"
            ))),
            _ => Err(incompatible(format!("cnn needs [C, H, W] inputs, these are {input_shape:?}"))),
        },
    }
}

pub(super) fn kind_name(kind: ModelKind) -> String {
    format!("{kind:?}").to_lowercase()
}

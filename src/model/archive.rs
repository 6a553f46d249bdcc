//! What a TorchScript archive's files say without running the module: whether
//! `torch.jit.trace` froze its train/eval behaviour, and which tensors its Python module's
//! `state_dict()` holds.
//!
//! ## Frozen modes
//!
//! Tracing records the operations one call ran, with their arguments as constants: a module
//! traced in eval mode calls `torch.batch_norm(..., False, ...)` and `torch.dropout(x, p,
//! False)` forever after, so training it updates weights with BatchNorm's running statistics
//! frozen and no dropout, silently (the hardening report measured loss 1.40 against 0.80
//! after 50 steps on a resnet). A scripted module passes `training` instead. The archive
//! keeps the module's code as text, so the constant is there to read, without running the
//! module (which, in train mode, would move BatchNorm's running statistics).

use std::io::Read;
use std::path::Path;

/// Operations whose behaviour depends on train/eval mode, with the position of the argument
/// that says which (`training`, or `use_input_stats` for instance norm).
const MODE_OPS: &[(&str, usize)] = &[
    ("torch.batch_norm(", 5),
    ("torch.instance_norm(", 5),
    ("torch.dropout(", 2),
    ("torch.feature_dropout(", 2),
    ("torch.alpha_dropout(", 2),
    ("torch.feature_alpha_dropout(", 2),
];

/// What the module's code fixes the mode of mode-dependent operations to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frozen {
    /// Eval mode: `operation` (and maybe others) always runs as in evaluation.
    Eval(String),
    /// Train mode: always as in training, evaluation included.
    Train(String),
}

/// Reads the code a TorchScript archive carries and says whether a mode-dependent operation
/// has its mode fixed by a constant; `None` when none has, or the file cannot be read as
/// an archive (loading it reports that).
pub fn frozen_mode(path: &Path) -> Option<Frozen> {
    texts(path, |name| name.contains("/code/") && name.ends_with(".py")).iter().find_map(|code| frozen_in(code))
}

/// The name of the extra file (`torch.jit.save(..., _extra_files={STATE_DICT_KEYS: ...})`)
/// in which an export lists its Python module's `state_dict()` keys, one per line.
/// TorchScript itself forgets which buffers were registered `persistent=False` (Hugging
/// Face's `position_ids`, say); with this list, checkpoints leave them out, as
/// `state_dict()` does, so they load into the Python module with `strict=True`.
pub const STATE_DICT_KEYS: &str = "state_dict_keys";

/// The keys the archive's [`STATE_DICT_KEYS`] extra file lists; `None` without one.
pub fn state_dict_keys(path: &Path) -> Option<Vec<String>> {
    let suffix = format!("/extra/{STATE_DICT_KEYS}");
    let text = texts(path, |name| name.ends_with(&suffix)).into_iter().next()?;
    Some(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}

/// The text of each archive entry whose name `wanted` accepts (entries over 16 MiB, or not
/// UTF-8, skipped); none when the file is not a zip archive (loading it reports that).
fn texts(path: &Path, wanted: impl Fn(&str) -> bool) -> Vec<String> {
    let Ok(file) = std::fs::File::open(path) else { return Vec::new() };
    let Ok(mut archive) = zip::ZipArchive::new(file) else { return Vec::new() };
    let mut out = Vec::new();
    for i in 0..archive.len() {
        let Ok(mut entry) = archive.by_index(i) else { continue };
        let Ok(name) = entry.name().map(|n| n.into_owned()) else { continue };
        if !wanted(&name) || entry.size() > 16 << 20 {
            continue;
        }
        let mut text = String::new();
        if entry.read_to_string(&mut text).is_ok() {
            out.push(text);
        }
    }
    out
}

/// The first mode-dependent call in `code` whose mode argument is a literal.
fn frozen_in(code: &str) -> Option<Frozen> {
    for (op, position) in MODE_OPS {
        for (at, _) in code.match_indices(op) {
            let name = op.trim_end_matches('(').to_string();
            let args = arguments(&code[at + op.len()..]);
            // Dropout with p = 0 does nothing in either mode (a Hugging Face config with
            // dropout off, traced): nothing is frozen.
            if op.contains("dropout") && args.get(1).and_then(|p| p.parse::<f64>().ok()) == Some(0.0) {
                continue;
            }
            match args.get(*position).map(String::as_str) {
                Some("False") => return Some(Frozen::Eval(name)),
                Some("True") => return Some(Frozen::Train(name)),
                _ => {}
            }
        }
    }
    None
}

/// The top-level arguments of a call, from just after its `(` to its matching `)`.
fn arguments(text: &str) -> Vec<String> {
    let (mut args, mut current, mut depth) = (Vec::new(), String::new(), 0usize);
    for c in text.chars() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' if depth == 0 => break,
            ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                args.push(current.trim().to_string());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    args.push(current.trim().to_string());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traced_eval_mode_batch_norm_is_frozen_in_eval() {
        let code =
            "input = torch.batch_norm(argument_1, weight, bias, running_mean, running_var, False, 0.1, 1e-05, True)";
        assert_eq!(frozen_in(code), Some(Frozen::Eval("torch.batch_norm".into())));
        assert_eq!(frozen_in("_0 = torch.dropout(argument_1, 0.5, True)"), Some(Frozen::Train("torch.dropout".into())));
    }

    #[test]
    fn scripted_calls_that_pass_the_training_flag_are_not_frozen() {
        let code =
            "_0 = torch.batch_norm(input, weight, bias, running_mean, running_var, bn_training, 0.1, 1e-05, True)\n\
                    _1 = torch.dropout(input, self.p, self.training)";
        assert_eq!(frozen_in(code), None);
        assert_eq!(frozen_in("return torch.linear(x, weight, bias)"), None);
    }

    #[test]
    fn a_traced_dropout_of_zero_changes_nothing_so_is_not_frozen() {
        assert_eq!(frozen_in("_0 = torch.dropout(x, 0., True)"), None);
        assert_eq!(
            frozen_in("_0 = torch.dropout(x, 0.10000000000000001, True)"),
            Some(Frozen::Train("torch.dropout".into()))
        );
    }
}

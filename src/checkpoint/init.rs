//! Initialising a model from existing weights, for fine-tuning (`model.init_from`,
//! `--init-from`): any file [`CheckpointFile`] reads (ours, a Hugging Face or other
//! safetensors file, a `torch.save` state dict or `{'model_state_dict': ...}` dict).
//!
//! Unlike a resume, the run starts at step 0 with a fresh optimizer, and by default the
//! match is loose, like PyTorch's `load_state_dict(strict=False)`: weights whose name and
//! shape match are loaded (float weights converted to the model's dtype: a bf16 file
//! initialises a float32 model), and the rest is reported in one table: names the file
//! lacks (they keep their fresh initialisation), names the model lacks, and shape
//! mismatches (a new classification head, say). With `model.init_strict` any of those is
//! an error. A file saved from a `DistributedDataParallel` or `torch.compile` wrapper, whose
//! names all carry `module.` or `_orig_mod.`, matches without it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;

use tch::{Device, Tensor};

use train_ckpt::{CheckpointFile, Entry, Role};

use super::error::CheckpointError;
use super::load::load_into;
use super::plan::reads::wrapper_prefix;
use super::tensors::read_tensor;
use crate::dtype::{is_float, to_kind};
use train_ckpt::strategy::Strategy;

/// How loosely [`init_from`] may match (`model.init_strict`, `model.init_min_loaded`,
/// `model.init_prefix_map`).
#[derive(Debug, Clone, Copy)]
pub struct InitOptions<'a> {
    /// Refuse any difference.
    pub strict: bool,
    /// The share of the model's tensors that must load.
    pub min_loaded: f64,
    /// File-name prefixes to replace before matching.
    pub prefix_map: &'a BTreeMap<String, String>,
}

/// The most rows of each kind (shape differs, not in file, not in model) the logged table
/// and the strict refusal show; the rest are counted, and the full table is logged at debug.
pub const TABLE_ROWS: usize = 20;

/// A tensor whose shape differs between the file and the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The model's name for it.
    pub name: String,
    /// Its shape in the file.
    pub file: Vec<usize>,
    /// Its shape in the model.
    pub model: Vec<i64>,
}

/// What an initialisation matched, loaded and left.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InitReport {
    /// The file.
    pub path: PathBuf,
    /// Model tensors loaded from the file.
    pub loaded: usize,
    /// Of those, the ones converted to the model's dtype: (name, file dtype).
    pub converted: Vec<(String, String)>,
    /// Model tensors the file lacks: they keep their fresh initialisation.
    pub missing: Vec<String>,
    /// File tensors the model lacks (by the file's name).
    pub unexpected: Vec<String>,
    /// Same name, another shape: the model's tensor keeps its fresh initialisation.
    pub mismatched: Vec<ShapeMismatch>,
    /// A wrapper prefix removed from the file's names, if any.
    pub stripped_prefix: Option<String>,
}

impl InitReport {
    /// Whether every model tensor was loaded and every file tensor used.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    /// The differences as one table: `status  name  file  model`, one row per tensor.
    pub fn table(&self) -> String {
        self.table_within(usize::MAX)
    }

    /// Whether [`InitReport::table_within`] `limit` leaves rows out.
    pub fn exceeds(&self, limit: usize) -> bool {
        [self.mismatched.len(), self.missing.len(), self.unexpected.len()].iter().any(|&n| n > limit)
    }

    /// The table with at most `limit` rows of each kind, and a row counting the rest of a
    /// kind: a file of 200,000 tensors made a 7.6 MB table in the log.
    pub fn table_within(&self, limit: usize) -> String {
        let mut rows: Vec<[String; 4]> = Vec::new();
        let more = |rows: &mut Vec<[String; 4]>, status: &str, n: usize| {
            if n > limit {
                rows.push([status.into(), format!("... and {} more", n - limit), String::new(), String::new()]);
            }
        };
        for m in self.mismatched.iter().take(limit) {
            rows.push(["shape differs".into(), m.name.clone(), format!("{:?}", m.file), format!("{:?}", m.model)]);
        }
        more(&mut rows, "shape differs", self.mismatched.len());
        for n in self.missing.iter().take(limit) {
            rows.push(["not in file".into(), n.clone(), "-".into(), "fresh".into()]);
        }
        more(&mut rows, "not in file", self.missing.len());
        for n in self.unexpected.iter().take(limit) {
            rows.push(["not in model".into(), n.clone(), "unused".into(), "-".into()]);
        }
        more(&mut rows, "not in model", self.unexpected.len());
        let header = ["status".to_string(), "tensor".into(), "file".into(), "model".into()];
        let widths: Vec<usize> = (0..4)
            .map(|i| rows.iter().chain(std::iter::once(&header)).map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&rows) {
            let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            let _ = writeln!(out, "  {}", line.join("  ").trim_end());
        }
        out
    }

    /// A few names of each kind of difference, for the line before the full table:
    /// `not in the file: a, b, c (+9 more); ...`.
    pub fn examples(&self) -> String {
        const SHOWN: usize = 3;
        let few = |names: Vec<&str>| {
            let more = names.len().saturating_sub(SHOWN);
            let shown = names[..names.len().min(SHOWN)].join(", ");
            if more > 0 {
                format!("{shown} (+{more} more)")
            } else {
                shown
            }
        };
        let kinds = [
            ("not in the file", self.missing.iter().map(String::as_str).collect::<Vec<_>>()),
            ("not in the model", self.unexpected.iter().map(String::as_str).collect()),
            ("shape differs", self.mismatched.iter().map(|m| m.name.as_str()).collect()),
        ];
        kinds
            .into_iter()
            .filter(|(_, n)| !n.is_empty())
            .map(|(k, n)| format!("{k}: {}", few(n)))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// One line for the log: counts, and what was adapted.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "initialised {} tensors from {}: {} not in the file, {} not in the model, {} of another shape",
            self.loaded,
            self.path.display(),
            self.missing.len(),
            self.unexpected.len(),
            self.mismatched.len()
        );
        if !self.converted.is_empty() {
            let _ = write!(s, "; {} converted from {}", self.converted.len(), self.converted[0].1);
        }
        if let Some(p) = &self.stripped_prefix {
            let _ = write!(s, "; the file's `{p}` prefix removed");
        }
        s
    }
}

/// How each model tensor pairs with the file, decided from the header alone.
fn match_names<'f>(
    weights: &[&'f Entry],
    vars: &HashMap<String, Tensor>,
    prefix_map: &BTreeMap<String, String>,
    report: &mut InitReport,
) -> Vec<(&'f Entry, String)> {
    // A mapping the user gave replaces the guess at a wrapper's prefix.
    let prefix = if prefix_map.is_empty() { wrapper_prefix(weights, |n| vars.contains_key(n)) } else { None };
    report.stripped_prefix = prefix.map(String::from);
    let model_name = |e: &Entry| match prefix {
        Some(p) => e.name[p.len()..].to_string(),
        None => mapped(&e.name, prefix_map),
    };
    let mut pairs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for e in weights {
        let name = model_name(e);
        match vars.get(&name) {
            None => report.unexpected.push(e.name.clone()),
            Some(var) => {
                seen.insert(name.clone());
                let shape: Vec<i64> = e.shape.iter().map(|&d| d as i64).collect();
                if shape != var.size() {
                    report.mismatched.push(ShapeMismatch { name, file: e.shape.clone(), model: var.size() });
                } else {
                    pairs.push((*e, name));
                }
            }
        }
    }
    report.missing = vars.keys().filter(|n| !seen.contains(*n)).cloned().collect();
    report.missing.sort();
    report.unexpected.sort();
    report.mismatched.sort_by(|a, b| a.name.cmp(&b.name));
    pairs
}

/// `name` with the longest key of `map` it starts with replaced by that key's value.
fn mapped(name: &str, map: &BTreeMap<String, String>) -> String {
    match map.iter().filter(|(k, _)| name.starts_with(k.as_str())).max_by_key(|(k, _)| k.len()) {
        Some((k, v)) => format!("{v}{}", &name[k.len()..]),
        None => name.to_string(),
    }
}

/// A one-key `model.init_prefix_map` (file prefix, model prefix), how many names it pairs,
/// and one pair it makes (model name, file name).
type PrefixSuggestion<'a> = ((String, String), usize, (&'a str, &'a str));

/// The one-key `model.init_prefix_map` that pairs the most file names with model names, when
/// the two differ by a constant dotted prefix on either side (Hugging Face's base model
/// saved without the `bert.` its task model carries, or the reverse).
fn suggest_prefix_map<'a>(file: &[&'a str], model: &[&'a str]) -> Option<PrefixSuggestion<'a>> {
    let (in_file, in_model): (std::collections::HashSet<&str>, std::collections::HashSet<&str>) =
        (file.iter().copied().collect(), model.iter().copied().collect());
    // Dotted suffixes of `name` (past each dot) that the other side holds, with the prefix.
    let splits = |name: &'a str, other: &std::collections::HashSet<&str>| -> Vec<(&'a str, &'a str)> {
        name.match_indices('.')
            .map(|(i, _)| (&name[..=i], &name[i + 1..]))
            .filter(|(_, rest)| other.contains(rest))
            .collect()
    };
    // Per mapping: how many names it pairs, and the first pair.
    #[allow(clippy::type_complexity)]
    let mut counts: HashMap<(String, String), (usize, (&str, &str))> = HashMap::new();
    for &m in model {
        for (prefix, rest) in splits(m, &in_file) {
            counts.entry((String::new(), prefix.to_string())).or_insert((0, (m, rest))).0 += 1;
        }
    }
    for &f in file {
        for (prefix, rest) in splits(f, &in_model) {
            counts.entry((prefix.to_string(), String::new())).or_insert((0, (rest, f))).0 += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(k, (n, _))| (*n, std::cmp::Reverse(k.0.len() + k.1.len())))
        .map(|(k, (n, e))| (k, n, e))
}

/// Loads the weights of `file` that fit into `vars` (the model's variables, on `device`),
/// with `strategy` (as a resume would, weights only). With `strict`, any difference is an
/// error listing them all, and nothing is loaded. The caller starts the optimizer fresh.
pub fn init_from(
    file: &CheckpointFile,
    vars: &HashMap<String, Tensor>,
    device: Device,
    strategy: Strategy,
    options: InitOptions<'_>,
) -> Result<InitReport, CheckpointError> {
    let path = file.path().to_path_buf();
    let weights: Vec<&Entry> = file.entries().iter().filter(|e| e.role == Role::Model).collect();
    let mut report = InitReport { path: path.clone(), ..InitReport::default() };
    let pairs = match_names(&weights, vars, options.prefix_map, &mut report);
    // Loading next to nothing trains from scratch under a fine-tuning run's name: refused,
    // before anything is loaded, with the mapping that would fit when there is one.
    if (pairs.len() as f64) < options.min_loaded * vars.len() as f64 {
        let file_names: Vec<&str> = weights.iter().map(|e| e.name.as_str()).collect();
        let model_names: Vec<&str> = vars.keys().map(String::as_str).collect();
        let hint = match suggest_prefix_map(&file_names, &model_names) {
            Some(((from, to), n, (m, f))) if n > pairs.len() => format!(
                "; the names differ by a prefix (the model's `{m}` is the file's `{f}`): \
                 model.init_prefix_map: {{\"{from}\": \"{to}\"}} would pair {n}"
            ),
            _ => String::new(),
        };
        return Err(CheckpointError::InitTooFew {
            path,
            loaded: pairs.len(),
            total: vars.len(),
            min: options.min_loaded,
            hint,
        });
    }
    let strict = options.strict;
    // A dtype libtorch cannot hold, or integer data for a float tensor (or the reverse),
    // is a mismatch the user must see, not a silent conversion.
    let mut same = HashMap::new();
    let mut convert = Vec::new();
    for (e, name) in pairs {
        let var = &vars[&name];
        match to_kind(e.dtype) {
            Some(kind) if kind == var.kind() => {
                same.insert(e.name.clone(), var.shallow_clone());
            }
            Some(_) if is_float(e.dtype) && var.is_floating_point() => {
                report.converted.push((name.clone(), format!("{:?}", e.dtype)));
                convert.push((e, var.shallow_clone()));
            }
            _ => {
                return Err(CheckpointError::Mismatch {
                    path,
                    tensor: e.name.clone(),
                    expected: format!("{:?} {:?}", var.kind(), var.size()),
                    found: format!("{:?} {:?}", e.dtype, e.shape),
                })
            }
        }
    }
    if strict && !report.is_exact() {
        return Err(CheckpointError::InitMismatch { path, table: report.table_within(TABLE_ROWS) });
    }
    let (outcome, _) = load_into(file, &same, device, strategy, false, false)?;
    let _guard = tch::no_grad_guard();
    for (e, var) in &convert {
        // One tensor at a time through host memory, whatever the strategy: converting needs
        // the file's copy anyway.
        let host = read_tensor(file, e)?;
        var.shallow_clone().f_copy_(&host).map_err(|source| CheckpointError::Torch { path: path.clone(), source })?;
    }
    report.loaded = outcome.weights + convert.len();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 17, item 2): MiniLM's own names lack the `bert.` of
    /// `BertForSequenceClassification`; the refusal names the mapping.
    #[test]
    fn a_constant_prefix_between_file_and_model_is_found_either_way() {
        let file = ["embeddings.word_embeddings.weight", "encoder.layer.0.output.dense.weight", "pooler.dense.bias"];
        let model = [
            "bert.embeddings.word_embeddings.weight",
            "bert.encoder.layer.0.output.dense.weight",
            "bert.pooler.dense.bias",
            "classifier.weight",
        ];
        let ((from, to), n, (m, f)) = suggest_prefix_map(&file, &model).unwrap();
        assert_eq!((from.as_str(), to.as_str(), n), ("", "bert.", 3));
        assert_eq!(m.strip_prefix("bert."), Some(f));
        let ((from, to), n, _) = suggest_prefix_map(&model, &file).unwrap();
        assert_eq!((from.as_str(), to.as_str(), n), ("bert.", "", 3));
        assert!(suggest_prefix_map(&["a.weight"], &["b.bias"]).is_none());
    }

    #[test]
    fn the_longest_mapped_prefix_wins() {
        let map: BTreeMap<String, String> =
            [("".to_string(), "bert.".to_string()), ("cls.".to_string(), "classifier.".to_string())].into();
        assert_eq!(mapped("encoder.x", &map), "bert.encoder.x");
        assert_eq!(mapped("cls.weight", &map), "classifier.weight");
        assert_eq!(mapped("x", &BTreeMap::new()), "x");
    }

    #[test]
    fn the_table_lists_every_difference_under_one_header() {
        let report = InitReport {
            path: "w.pth".into(),
            loaded: 2,
            missing: vec!["fc.bias".into()],
            unexpected: vec!["pooler.dense.weight".into()],
            mismatched: vec![ShapeMismatch { name: "fc.weight".into(), file: vec![1000, 512], model: vec![4, 512] }],
            ..InitReport::default()
        };
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].contains("status") && lines[0].contains("tensor"), "{table}");
        assert!(
            lines[1].contains("shape differs") && lines[1].contains("[1000, 512]") && lines[1].contains("[4, 512]")
        );
        assert!(lines[2].contains("not in file") && lines[2].contains("fc.bias"));
        assert!(lines[3].contains("not in model") && lines[3].contains("pooler.dense.weight"));
        assert!(!report.is_exact());
        assert!(report.summary().starts_with("initialised 2 tensors from w.pth: 1 not in the file"));
    }

    #[test]
    fn an_init_table_of_200000_tensors_is_capped_with_the_rest_counted() {
        let report = InitReport {
            path: "huge.safetensors".into(),
            unexpected: (0..200_000).map(|i| format!("layers.{i}.weight")).collect(),
            missing: vec!["fc.bias".into()],
            ..InitReport::default()
        };
        assert!(report.exceeds(TABLE_ROWS));
        let table = report.table_within(TABLE_ROWS);
        let lines: Vec<&str> = table.lines().collect();
        // Header, 1 not in file, 20 not in model, one count.
        assert_eq!(lines.len(), 23, "{table}");
        assert!(lines[22].contains("not in model") && lines[22].contains("... and 199980 more"), "{table}");
        assert!(table.len() < 4096, "{} bytes", table.len());
        assert_eq!(report.table().lines().count(), 200_002);
    }
}

//! Layering: built-in defaults → built-in profile → config file → the file's experiment
//! section → `TRAIN_*` environment variables → `--set` flags → dedicated flags (`--device`...).
//!
//! Each layer is one figment provider whose metadata names it exactly ("file x.yaml",
//! "environment variable TRAIN_TRAINING__EPOCHS", "--set training.epochs=3"), so that both
//! `config show` and every error can say where a value came from. Values from the
//! environment and from `--set` are YAML, as in the file, so `3`, `true`, `1e-3` and
//! `[64, 32]` mean the same everywhere.

use std::path::{Path, PathBuf};

use figment::error::Kind;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile as FigmentProfile, Provider};
use serde::Serialize;

use super::error::ConfigError;
use super::profiles::{profile, PROFILES};
use super::schema::Config;

/// Environment variables with this prefix are configuration; `__` separates nesting levels:
/// `TRAIN_MEMORY__LOAD_OPTIMIZER_STATE=false` sets `memory.load_optimizer_state`.
pub const ENV_PREFIX: &str = "TRAIN_";

/// The top-level key of a config file that holds its named experiments.
const EXPERIMENTS_KEY: &str = "experiments";

/// What to resolve: the raw inputs, gathered by the caller (the CLI passes the process
/// environment; tests pass their own).
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The YAML config file, if any.
    pub file: Option<PathBuf>,
    /// The experiment name: a built-in profile, an entry of the file's `experiments:`, or both.
    pub experiment: Option<String>,
    /// Environment variables; only those starting with [`ENV_PREFIX`] are read.
    pub env: Vec<(String, String)>,
    /// `--set KEY=VALUE` arguments, in order.
    pub sets: Vec<String>,
    /// Dedicated flags that set one key each, applied last.
    pub flags: Vec<FlagOverride>,
}

/// A command-line flag that sets one key, such as `--device cuda` → `run.device`, or a
/// switch such as `--init-strict` → `model.init_strict: true`.
#[derive(Debug, Clone)]
pub struct FlagOverride {
    /// The flag as the user typed it, for provenance (`--device`).
    pub flag: &'static str,
    /// The dotted key it sets.
    pub key: &'static str,
    /// The value, taken as a string; `None` for a switch, which sets `true`.
    pub value: Option<String>,
}

impl FlagOverride {
    /// A flag with a value, taken as a string.
    pub fn new(flag: &'static str, key: &'static str, value: impl Into<String>) -> Self {
        Self { flag, key, value: Some(value.into()) }
    }

    /// A switch: the flag alone sets the boolean key to `true`.
    pub fn switch(flag: &'static str, key: &'static str) -> Self {
        Self { flag, key, value: None }
    }
}

/// Where one leaf value of the final configuration came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Origin {
    /// Dotted key, e.g. `memory.load_optimizer_state`.
    pub key: String,
    /// The final value.
    pub value: serde_json::Value,
    /// The layer that set it, e.g. `profile ultra_low_memory` or `--set training.epochs=2`.
    pub source: String,
}

/// The outcome of [`resolve`]: the validated config and the provenance of each value.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The merged, validated configuration.
    pub config: Config,
    /// The experiment name, if one was given.
    pub experiment: Option<String>,
    /// Every leaf value with the layer that set it, in schema order.
    pub origins: Vec<Origin>,
    /// The names of the layers that applied, lowest first.
    pub layers: Vec<String>,
}

/// One configuration layer: a dictionary and the name it is reported under.
struct Layer {
    name: String,
    file: Option<PathBuf>,
    dict: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        let metadata = Metadata::named(self.name.clone());
        match &self.file {
            Some(path) => metadata.source(figment::Source::File(path.clone())),
            None => metadata,
        }
    }

    fn data(&self) -> Result<Map<FigmentProfile, Dict>, figment::Error> {
        Ok(FigmentProfile::Default.collect(self.dict.clone()))
    }
}

/// Merges every layer, checks the result against the schema and validates it.
pub fn resolve(request: &Request) -> Result<Resolved, ConfigError> {
    let layers = collect_layers(request)?;
    let names: Vec<String> = layers.iter().map(|l| l.name.clone()).collect();
    let figment = layers.into_iter().fold(Figment::new(), Figment::merge);
    let config: Config = figment.extract().map_err(|e| translate(&figment, e))?;
    config.validate()?;
    let origins = origins(&figment, &config);
    tracing::debug!(layers = ?names, "configuration layers applied");
    Ok(Resolved { config, experiment: request.experiment.clone(), origins, layers: names })
}

fn collect_layers(request: &Request) -> Result<Vec<Layer>, ConfigError> {
    let defaults = to_dict(&Config::default());
    let mut layers = vec![Layer { name: "built-in default".into(), file: None, dict: defaults }];

    let (file_dict, experiments) = match &request.file {
        Some(path) => read_config_file(path)?,
        None => (Dict::new(), Dict::new()),
    };

    if let Some(name) = &request.experiment {
        let builtin = profile(name);
        if builtin.is_none() && !experiments.contains_key(name) {
            let mut valid: Vec<String> = PROFILES.iter().map(|p| p.name.to_string()).collect();
            valid.extend(experiments.keys().filter(|k| !valid.contains(k)).cloned().collect::<Vec<_>>());
            return Err(ConfigError::UnknownExperiment { name: name.clone(), valid });
        }
        if let Some(p) = builtin {
            let dict =
                parse_yaml_dict(p.yaml).unwrap_or_else(|e| panic!("built-in profile {} does not parse: {e}", p.name));
            layers.push(Layer { name: format!("profile {}", p.name), file: None, dict });
        }
    }

    if let Some(path) = &request.file {
        layers.push(Layer { name: format!("file {}", path.display()), file: Some(path.clone()), dict: file_dict });
        if let Some(name) = &request.experiment {
            if let Some(section) = experiments.get(name) {
                let dict = section.as_dict().cloned().ok_or_else(|| ConfigError::ParseFile {
                    path: path.clone(),
                    message: format!("`{EXPERIMENTS_KEY}.{name}` must be a mapping of settings"),
                })?;
                layers.push(Layer {
                    name: format!("experiment {name} in {}", path.display()),
                    file: Some(path.clone()),
                    dict,
                });
            }
        }
    }

    let mut env: Vec<&(String, String)> = request.env.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    env.sort();
    for (var, raw) in env {
        let key = env_key(var).ok_or_else(|| ConfigError::BadEnv {
            var: var.clone(),
            reason: format!("expected {ENV_PREFIX}SECTION__KEY, e.g. {ENV_PREFIX}TRAINING__EPOCHS"),
        })?;
        let value = parse_yaml_value(raw).map_err(|reason| ConfigError::BadEnv { var: var.clone(), reason })?;
        layers.push(single(format!("environment variable {var}"), &key, value));
    }

    for arg in &request.sets {
        let bad = |reason: String| ConfigError::BadSet { arg: arg.clone(), reason };
        let (key, raw) = arg.split_once('=').ok_or_else(|| bad("expected KEY=VALUE".into()))?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(bad(format!("`{key}` is not a dotted key such as training.epochs")));
        }
        let value = parse_yaml_value(raw).map_err(bad)?;
        layers.push(single(format!("--set {arg}"), key, value));
    }

    for flag in &request.flags {
        let (value, source) = match &flag.value {
            Some(v) => (Value::from(v.clone()), format!("{} {v}", flag.flag)),
            None => (Value::from(true), flag.flag.to_string()),
        };
        layers.push(single(source, flag.key, value));
    }
    Ok(layers)
}

/// The largest config file read. Real ones are a few KiB; the cap keeps `--config
/// /dev/zero`-like mistakes (a huge or endless file) from filling memory.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// The deepest nesting of YAML collections accepted. serde_yaml's parser takes quadratic time
/// in nesting depth (200 KB of `[` took 48 s); real configs nest 3 or 4 levels.
pub const MAX_CONFIG_DEPTH: usize = 64;

/// Reads a config file: its top level (minus `experiments:`) and its experiment sections.
///
/// Only a regular file is opened (a FIFO would block `open` forever, a device could be
/// endless), at most [`MAX_CONFIG_BYTES`] are read, and its nesting is bounded before the
/// YAML parser sees it.
fn read_config_file(path: &Path) -> Result<(Dict, Dict), ConfigError> {
    use std::io::Read;
    let read_error = |source| ConfigError::ReadFile { path: path.to_path_buf(), source };
    let parse_error = |message| ConfigError::ParseFile { path: path.to_path_buf(), message };
    let meta = std::fs::metadata(path).map_err(read_error)?;
    let refuse = |why: String| read_error(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
    if !meta.is_file() {
        return Err(refuse("not a regular file (a folder, FIFO or device); --config needs a YAML file".into()));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path).and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes)).map_err(read_error)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(refuse(format!(
            "larger than {}, the most a config file may be",
            bytesize::ByteSize(MAX_CONFIG_BYTES)
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| parse_error(format!("not UTF-8 text: {e}")))?;
    check_nesting(&text).map_err(parse_error)?;
    let mut dict = parse_yaml_dict(&text).map_err(parse_error)?;
    let experiments = match dict.remove(EXPERIMENTS_KEY) {
        None => Dict::new(),
        Some(v) => v.into_dict().ok_or_else(|| ConfigError::ParseFile {
            path: path.to_path_buf(),
            message: format!("`{EXPERIMENTS_KEY}` must map experiment names to settings"),
        })?,
    };
    Ok((dict, experiments))
}

/// Refuses YAML nested deeper than [`MAX_CONFIG_DEPTH`], by a cheap scan rather than the
/// parser: the depth of flow brackets (`[`, `{`; quoted text and comments skipped) and, for
/// block style, the number of enclosing indentation levels and `- ` items of each line.
/// Names the line where the limit is passed.
fn check_nesting(text: &str) -> Result<(), String> {
    let too_deep = |line: usize| {
        Err(format!(
            "line {}: nested more than {MAX_CONFIG_DEPTH} levels deep, the most a config file may be",
            line + 1
        ))
    };
    let mut flow = 0usize;
    let mut indents: Vec<usize> = Vec::new();
    let mut quote: Option<char> = None;
    for (number, line) in text.lines().enumerate() {
        let body = line.trim_start_matches(' ');
        if quote.is_none() && flow == 0 && !body.is_empty() && !body.starts_with('#') {
            // Block style: the indentation levels enclosing this line, plus its `- ` items.
            let indent = line.len() - body.len();
            while indents.last().is_some_and(|&i| i >= indent) {
                indents.pop();
            }
            indents.push(indent);
            let dashes = body.split_inclusive(' ').take_while(|w| w.trim_end() == "-").count();
            if indents.len() + dashes > MAX_CONFIG_DEPTH {
                return too_deep(number);
            }
        }
        let mut previous = ' ';
        for c in line.chars() {
            match (quote, c) {
                (Some('\''), '\'') | (Some('"'), '"') if previous != '\\' => quote = None,
                (Some(_), _) => {}
                (None, '#') if previous == ' ' || previous == '\t' => break,
                // A quote opens a scalar only where one starts (`don't` is plain text).
                (None, '\'' | '"') if matches!(previous, ' ' | '[' | '{' | ',' | ':' | '-') => quote = Some(c),
                (None, '[' | '{') => {
                    flow += 1;
                    if flow + indents.len() > MAX_CONFIG_DEPTH {
                        return too_deep(number);
                    }
                }
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
            previous = c;
        }
    }
    Ok(())
}

fn parse_yaml_dict(text: &str) -> Result<Dict, String> {
    let yaml: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    match yaml {
        serde_yaml::Value::Null => Ok(Dict::new()),
        serde_yaml::Value::Mapping(_) => serde_yaml::from_value(yaml).map_err(|e| format!("keys must be strings: {e}")),
        _ => Err("the top level must be a mapping of sections".into()),
    }
}

fn parse_yaml_value(raw: &str) -> Result<Value, String> {
    serde_yaml::from_str(raw).map_err(|e| format!("value `{raw}` is not YAML: {e}"))
}

/// `TRAIN_MEMORY__LOAD_OPTIMIZER_STATE` → `memory.load_optimizer_state`.
fn env_key(var: &str) -> Option<String> {
    let rest = var.strip_prefix(ENV_PREFIX)?;
    let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    (!parts.iter().any(String::is_empty)).then(|| parts.join("."))
}

fn single(name: String, key: &str, value: Value) -> Layer {
    let dict = figment::util::nest(key, value).into_dict().expect("nest returns a dict");
    Layer { name, file: None, dict }
}

fn to_dict<T: Serialize>(value: &T) -> Dict {
    Value::serialize(value).ok().and_then(Value::into_dict).expect("the config schema serializes to a dictionary")
}

/// Turns figment's error into one that names the key, the layer and, for a typo, the
/// nearest valid key.
fn translate(figment: &Figment, error: figment::Error) -> ConfigError {
    let origin_of = |key: &str, fallback: &Option<Metadata>| {
        figment
            .find_metadata(key)
            .or(fallback.as_ref())
            .map(|m| m.name.to_string())
            .unwrap_or_else(|| "an unknown layer".into())
    };
    // figment may chain several errors; the first is reported, as a compiler reports its first.
    let error = error.into_iter().next().expect("an error holds at least one error");
    let parent = error.path.join(".");
    match &error.kind {
        Kind::UnknownField(field, expected) => {
            // figment's path already ends with the unknown field.
            let mut path = error.path.clone();
            if path.last() == Some(field) {
                path.pop();
            }
            let join = |f: &str| path.iter().map(String::as_str).chain([f]).collect::<Vec<_>>().join(".");
            let key = join(field);
            let suggestion = nearest(field, expected).map(join);
            ConfigError::UnknownKey { origin: origin_of(&key, &error.metadata), key, suggestion }
        }
        Kind::UnknownVariant(variant, expected) => ConfigError::BadValue {
            origin: origin_of(&parent, &error.metadata),
            message: format!(
                "`{variant}` is not one of {}{}",
                expected.join(", "),
                nearest(variant, expected).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default()
            ),
            key: parent,
        },
        Kind::InvalidType(actual, expected) => ConfigError::BadValue {
            origin: origin_of(&parent, &error.metadata),
            message: format!("expected {expected}, found {actual}"),
            key: parent,
        },
        kind => ConfigError::BadValue {
            origin: origin_of(&parent, &error.metadata),
            message: kind.to_string(),
            key: parent,
        },
    }
}

/// The valid name closest to a misspelt one, if any is close enough to be a likely typo.
fn nearest<'a>(wrong: &str, valid: &[&'a str]) -> Option<&'a str> {
    valid
        .iter()
        .map(|v| (strsim::jaro_winkler(wrong, v), *v))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, v)| v)
}

/// Walks the final config and asks figment which layer set each leaf.
fn origins(figment: &Figment, config: &Config) -> Vec<Origin> {
    fn walk(figment: &Figment, prefix: &str, value: serde_json::Value, out: &mut Vec<Origin>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                    walk(figment, &key, v, out);
                }
            }
            leaf => {
                let source = figment
                    .find_metadata(prefix)
                    .map(|m| m.name.to_string())
                    .unwrap_or_else(|| "built-in default".into());
                out.push(Origin { key: prefix.to_string(), value: leaf, source });
            }
        }
    }
    let mut out = Vec::new();
    let json = serde_json::to_value(config).expect("the config schema serializes to JSON");
    walk(figment, "", json, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source_of(resolved: &Resolved, key: &str) -> String {
        resolved.origins.iter().find(|o| o.key == key).unwrap().source.clone()
    }

    #[test]
    fn env_names_map_to_dotted_keys() {
        assert_eq!(env_key("TRAIN_MEMORY__LOAD_OPTIMIZER_STATE").as_deref(), Some("memory.load_optimizer_state"));
        assert_eq!(env_key("TRAIN_TRAINING__OPTIMIZER__LR").as_deref(), Some("training.optimizer.lr"));
        assert_eq!(env_key("TRAIN_"), None);
        assert_eq!(env_key("TRAIN_A____B"), None);
    }

    #[test]
    fn later_layers_override_earlier_ones_and_are_named() {
        let request = Request {
            experiment: Some("ultra_low_memory".into()),
            env: vec![("TRAIN_TRAINING__EPOCHS".into(), "7".into()), ("HOME".into(), "/root".into())],
            sets: vec!["training.batch_size=16".into(), "training.epochs=9".into()],
            ..Request::default()
        };
        let r = resolve(&request).unwrap();
        assert_eq!(r.config.training.epochs, 9);
        assert_eq!(r.config.training.batch_size, 16);
        assert!(!r.config.memory.load_optimizer_state);
        assert_eq!(source_of(&r, "training.epochs"), "--set training.epochs=9");
        assert_eq!(source_of(&r, "memory.load_optimizer_state"), "profile ultra_low_memory");
        assert_eq!(source_of(&r, "training.seed"), "built-in default");
    }

    #[test]
    fn a_typo_is_reported_with_the_nearest_key() {
        let request = Request { sets: vec!["memory.compress_checkpoint=true".into()], ..Request::default() };
        match resolve(&request).unwrap_err() {
            ConfigError::UnknownKey { key, origin, suggestion } => {
                assert_eq!(key, "memory.compress_checkpoint");
                assert_eq!(origin, "--set memory.compress_checkpoint=true");
                assert_eq!(suggestion.as_deref(), Some("memory.compress_checkpoints"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_wrong_type_names_key_and_expected_type() {
        let request = Request { sets: vec!["training.epochs=many".into()], ..Request::default() };
        let err = resolve(&request).unwrap_err().to_string();
        assert!(err.contains("training.epochs") && err.contains("expected u32"), "{err}");
    }

    #[test]
    fn yaml_values_on_the_command_line() {
        let request = Request {
            sets: vec!["model.mlp.hidden=[64, 32]".into(), "training.optimizer.lr=1e-2".into()],
            ..Request::default()
        };
        let c = resolve(&request).unwrap().config;
        assert_eq!(c.model.mlp.hidden, vec![64, 32]);
        assert_eq!(c.training.optimizer.lr, 1e-2);
    }
}

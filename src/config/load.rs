//! Layering: built-in defaults → built-in profile → config file → the file's experiment
//! section → `TRAIN_*` environment variables → `--set` flags → dedicated flags (`--device`...).
//!
//! Each layer is one figment provider whose metadata names it exactly ("file x.yaml",
//! "environment variable TRAIN_TRAINING__EPOCHS", "--set training.epochs=3"), so that both
//! `config show` and every error can say where a value came from. Values from the
//! environment and from `--set` are YAML, as in the file, so `3`, `true`, `1e-3` and
//! `[64, 32]` mean the same everywhere.

use std::path::PathBuf;

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile as FigmentProfile, Provider};
use serde::Serialize;

use super::error::ConfigError;
use super::profiles::{profile, PROFILES};
use super::provenance::{origins, translate, Origin};
use super::schema::Config;
use super::yaml::{parse_yaml_dict, parse_yaml_value, read_config_file, EXPERIMENTS_KEY};

/// Environment variables with this prefix are configuration; `__` separates nesting levels:
/// `TRAIN_MEMORY__LOAD_OPTIMIZER_STATE=false` sets `memory.load_optimizer_state`.
pub const ENV_PREFIX: &str = "TRAIN_";

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
        let value =
            parse_yaml_value(raw).map_err(|e| ConfigError::BadEnv { var: var.clone(), reason: e.to_string() })?;
        layers.push(single(format!("environment variable {var}"), &key, value));
    }

    for arg in &request.sets {
        let bad = |reason: String| ConfigError::BadSet { arg: arg.clone(), reason };
        let (key, raw) = arg.split_once('=').ok_or_else(|| bad("expected KEY=VALUE".into()))?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(bad(format!("`{key}` is not a dotted key such as training.epochs")));
        }
        let value = parse_yaml_value(raw).map_err(|e| bad(e.to_string()))?;
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

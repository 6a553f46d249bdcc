//! What can be wrong with a configuration.

use std::path::PathBuf;

/// Everything that can be wrong with a configuration. Each variant names the culprit: the
/// file, the key, the flag or the environment variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid YAML, or not a mapping at the top.
    #[error("config file {path} is not valid: {message}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// `--experiment` names neither a built-in profile nor an entry of the file's `experiments:`.
    #[error("unknown experiment `{name}`: valid experiments are {}", valid.join(", "))]
    UnknownExperiment {
        /// The name asked for.
        name: String,
        /// Every name that would have worked.
        valid: Vec<String>,
    },
    /// A `--set` argument that is not `KEY=VALUE` with a YAML value.
    #[error("cannot parse `--set {arg}`: {reason}")]
    BadSet {
        /// The argument as given.
        arg: String,
        /// Why.
        reason: String,
    },
    /// A `TRAIN_*` environment variable that does not parse.
    #[error("cannot parse environment variable {var}: {reason}")]
    BadEnv {
        /// The variable's name.
        var: String,
        /// Why.
        reason: String,
    },
    /// A key the schema does not have.
    #[error("unknown key `{key}` (from {origin}){}", suggestion.as_ref().map(|s| format!(": did you mean `{s}`?")).unwrap_or_default())]
    UnknownKey {
        /// The full dotted key.
        key: String,
        /// The layer that set it (file, experiment, variable, flag).
        origin: String,
        /// The nearest valid key, when one is close.
        suggestion: Option<String>,
    },
    /// A value of the wrong type or outside the values a key takes.
    #[error("invalid value for `{key}` (from {origin}): {message}")]
    BadValue {
        /// The full dotted key.
        key: String,
        /// The layer that set it.
        origin: String,
        /// What was expected and what was found.
        message: String,
    },
    /// A value that parses but breaks a rule of the schema.
    #[error("invalid `{key}`: {message}")]
    Invalid {
        /// The full dotted key.
        key: String,
        /// The rule broken.
        message: String,
    },
}

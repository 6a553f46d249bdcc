//! Where values came from: each leaf's layer ([`Origin`]), and figment's errors turned into
//! ones that name the key, the layer and, for a typo, the nearest valid key.

use figment::error::Kind;
use figment::{Figment, Metadata};
use serde::Serialize;

use super::error::ConfigError;
use super::schema::Config;

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

/// Turns figment's error into one that names the key, the layer and, for a typo, the
/// nearest valid key.
pub(super) fn translate(figment: &Figment, error: figment::Error) -> ConfigError {
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
pub(super) fn origins(figment: &Figment, config: &Config) -> Vec<Origin> {
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

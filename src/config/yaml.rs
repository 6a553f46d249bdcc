//! Reading YAML safely: a config file (a regular file, of bounded size and nesting, before
//! the parser sees it), and the single values the environment and `--set` give.

use std::path::Path;

use figment::value::{Dict, Value};

use super::error::ConfigError;

/// The top-level key of a config file that holds its named experiments.
pub(super) const EXPERIMENTS_KEY: &str = "experiments";

/// Why a config file's text is not a configuration; shown after the file's name.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    /// The bytes are not UTF-8.
    #[error("not UTF-8 text: {0}")]
    NotUtf8(std::string::FromUtf8Error),
    /// Nested deeper than [`MAX_CONFIG_DEPTH`] at 1-based line `line`.
    #[error("line {line}: nested more than {MAX_CONFIG_DEPTH} levels deep, the most a config file may be")]
    TooDeep {
        /// The line where the limit is passed (1-based).
        line: usize,
    },
    /// The YAML parser's error.
    #[error("{0}")]
    Syntax(serde_yaml::Error),
    /// A mapping with keys other than strings.
    #[error("keys must be strings: {0}")]
    KeysNotStrings(serde_yaml::Error),
    /// The document is not a mapping.
    #[error("the top level must be a mapping of sections")]
    NotMapping,
    /// `experiments:` is not a mapping.
    #[error("`{EXPERIMENTS_KEY}` must map experiment names to settings")]
    ExperimentsNotMapping,
}

/// A value given outside a file that is not YAML.
#[derive(Debug, thiserror::Error)]
#[error("value `{raw}` is not YAML: {source}")]
pub struct ValueError {
    /// The text given.
    pub raw: String,
    /// The YAML parser's error.
    pub source: serde_yaml::Error,
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
pub(super) fn read_config_file(path: &Path) -> Result<(Dict, Dict), ConfigError> {
    use std::io::Read;
    let read_error = |source| ConfigError::ReadFile { path: path.to_path_buf(), source };
    let parse_error = |e: YamlError| ConfigError::ParseFile { path: path.to_path_buf(), message: e.to_string() };
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
    let text = String::from_utf8(bytes).map_err(|e| parse_error(YamlError::NotUtf8(e)))?;
    check_nesting(&text).map_err(parse_error)?;
    let mut dict = parse_yaml_dict(&text).map_err(parse_error)?;
    let experiments = match dict.remove(EXPERIMENTS_KEY) {
        None => Dict::new(),
        Some(v) => v.into_dict().ok_or_else(|| parse_error(YamlError::ExperimentsNotMapping))?,
    };
    Ok((dict, experiments))
}

/// Refuses YAML nested deeper than [`MAX_CONFIG_DEPTH`], by a cheap scan rather than the
/// parser: the depth of flow brackets (`[`, `{`; quoted text and comments skipped) and, for
/// block style, the number of enclosing indentation levels and `- ` items of each line.
/// Names the line where the limit is passed.
fn check_nesting(text: &str) -> Result<(), YamlError> {
    let too_deep = |number: usize| Err(YamlError::TooDeep { line: number + 1 });
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

/// A YAML document as the dictionary of sections a layer is.
pub(super) fn parse_yaml_dict(text: &str) -> Result<Dict, YamlError> {
    let yaml: serde_yaml::Value = serde_yaml::from_str(text).map_err(YamlError::Syntax)?;
    match yaml {
        serde_yaml::Value::Null => Ok(Dict::new()),
        serde_yaml::Value::Mapping(_) => serde_yaml::from_value(yaml).map_err(YamlError::KeysNotStrings),
        _ => Err(YamlError::NotMapping),
    }
}

/// One value given outside a file (an environment variable, `--set`), read as YAML.
pub(super) fn parse_yaml_value(raw: &str) -> Result<Value, ValueError> {
    serde_yaml::from_str(raw).map_err(|source| ValueError { raw: raw.to_string(), source })
}

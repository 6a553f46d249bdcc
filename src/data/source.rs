//! Where the configured data comes from, and the checks every loader shares: the file a
//! key names, the host memory a load takes, and the validation split's size.

use std::path::Path;

use tch::Tensor;

use super::config::{DataConfig, DataKind};
use super::error::DataError;
use super::split::Split;

/// Where the configured data comes from: `data.dir` for IDX files and image folders,
/// `data.path` for the kinds read from one file (the key that does not apply is not shown).
pub fn source_of(cfg: &DataConfig) -> &Path {
    match cfg.kind {
        DataKind::Idx | DataKind::ImageFolder => &cfg.dir,
        _ => cfg.path.as_deref().unwrap_or(&cfg.dir),
    }
}

pub(super) fn required_path(cfg: &DataConfig) -> Result<&Path, DataError> {
    cfg.path.as_deref().ok_or_else(|| DataError::Config(format!("data.kind {:?} needs data.path", cfg.kind)))
}

/// The number of validation examples out of `n`: `val_fraction` of them, at least one.
pub(super) fn val_count(n: usize, fraction: f64, path: &Path) -> Result<usize, DataError> {
    let val = ((n as f64 * fraction).round() as usize).max(1);
    if n < 2 || val >= n {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            reason: format!("{n} examples are too few to split off a validation set (data.val_fraction = {fraction})"),
        });
    }
    Ok(val)
}

pub(super) fn split_tail(inputs: Vec<Tensor>, targets: Tensor, val: usize) -> (Split, Split) {
    let n = targets.size()[0];
    let t = n - val as i64;
    let all = Split::in_memory(inputs, targets);
    (all.rows(0, t), all.rows(t, val as i64))
}

/// An I/O error on `path`, which the configuration key `key` names (or lies under): a
/// missing file is the configuration's fault.
pub(super) fn read_error(key: &'static str, path: &Path, source: std::io::Error) -> DataError {
    if source.kind() == std::io::ErrorKind::NotFound {
        DataError::NotFound { key, path: path.to_path_buf() }
    } else {
        DataError::Io { path: path.to_path_buf(), source }
    }
}

/// Refuses to load `path` when it would take more than the available memory (the host's,
/// or its memory cgroup's when that is smaller).
pub(super) fn check_host_memory(path: &Path, needed: u64) -> Result<(), DataError> {
    let host = crate::memory::probe::host();
    match host.available {
        Some(available) if needed > available => {
            Err(DataError::TooLarge { path: path.to_path_buf(), needed, available, from: host.available_from() })
        }
        _ => Ok(()),
    }
}

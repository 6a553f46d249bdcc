//! Checking that the configured data files exist without reading them (`--dry-run`, and
//! before a run takes its folder).

use std::path::{Path, PathBuf};

use super::config::{DataConfig, DataKind};
use super::error::DataError;

/// The IDX files a `data.kind: idx` folder must hold (each plain or gzipped).
const IDX_FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

/// Checks that the configured data files exist, without reading them.
pub fn check_files(cfg: &DataConfig) -> Result<(), DataError> {
    let files: Vec<(PathBuf, PathBuf)> = match (cfg.kind, &cfg.path) {
        (DataKind::Idx, _) => {
            IDX_FILES.iter().map(|stem| (cfg.dir.join(stem), cfg.dir.join(format!("{stem}.gz")))).collect()
        }
        (DataKind::ImageFolder, _) if !cfg.dir.is_dir() => {
            return Err(DataError::NotFound { key: "data.dir", path: cfg.dir.clone() });
        }
        (DataKind::ImageFolder, _) => Vec::new(),
        (DataKind::Npy, Some(path)) if !path.is_dir() => {
            return Err(DataError::NotFound { key: "data.path", path: path.clone() });
        }
        (DataKind::Npy, _) => Vec::new(),
        // A folder or a brace pattern of shards: opening them names any that is missing.
        (DataKind::Webdataset, _) => Vec::new(),
        (_, Some(path)) if !path.is_file() => {
            return Err(DataError::NotFound { key: "data.path", path: path.clone() });
        }
        (_, _) => Vec::new(),
    };
    for (plain, alt) in files {
        if !plain.is_file() && !alt.is_file() {
            let dir = plain.parent().map(Path::to_path_buf).unwrap_or_default();
            return Err(DataError::Missing { path: alt, dir });
        }
    }
    Ok(())
}

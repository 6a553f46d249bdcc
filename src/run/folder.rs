//! The run folder: its layout, the lock that makes one process its only writer, and the
//! files a run writes beside its checkpoints.
//!
//! ```text
//! <output_dir>/config.yaml     the resolved configuration of the latest start
//! <output_dir>/metrics.jsonl   step, epoch and event lines (see crate::metrics)
//! <output_dir>/checkpoints/    see checkpoint::store
//! ```
//!
//! The lock is taken before anything in the folder is read, so deciding whether to start
//! fresh or resume happens under it: two processes started on one new folder cannot both
//! decide "fresh" (the second waits for nothing and is refused as busy).

use std::fs::File;
use std::path::{Path, PathBuf};

use super::error::RunError;
use super::job::UserConfig;
use crate::checkpoint::store;
use crate::config::Resolved;
use crate::metrics::{self, MetricsLog};

/// File name of the resolved configuration in a run folder.
pub const CONFIG_FILE: &str = "config.yaml";
/// File name of the metrics log in a run folder.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Run name when no experiment is given.
pub const DEFAULT_RUN_NAME: &str = "default";

/// The run folder: `run.output_dir`, or `runs/<experiment>`.
pub fn output_dir(resolved: &Resolved) -> PathBuf {
    resolved
        .config
        .run
        .output_dir
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(resolved.experiment.as_deref().unwrap_or(DEFAULT_RUN_NAME)))
}

/// A run folder held by this process.
pub struct RunFolder {
    root: PathBuf,
    /// The outermost folder this process created on the way to `root` (`root` itself, or an
    /// ancestor), removed again by [`RunFolder::release_unused`] while empty.
    created: Option<PathBuf>,
    /// The flock on the folder itself (no lock file is left behind), held until drop.
    _lock: File,
}

impl RunFolder {
    /// Creates `root` if needed and locks it. Refuses a path that exists and is not a folder,
    /// and a folder another process holds.
    pub fn acquire(root: &Path) -> Result<Self, RunError> {
        let io = |source| RunError::Io { path: root.to_path_buf(), source };
        if root.exists() && !root.is_dir() {
            return Err(RunError::NotAFolder { path: root.to_path_buf() });
        }
        let new: Vec<PathBuf> =
            root.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).map(Path::to_path_buf).collect();
        let created = new.last().cloned();
        // A signal during start-up ends the process from its handler: these go with it.
        super::signals::forget_on_start_up_exit(&new);
        std::fs::create_dir_all(root).map_err(io)?;
        let lock = File::open(root).map_err(io)?;
        match lock.try_lock() {
            Ok(()) => Ok(Self { root: root.to_path_buf(), created, _lock: lock }),
            Err(std::fs::TryLockError::WouldBlock) => Err(RunError::Busy { dir: root.to_path_buf() }),
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }

    /// Locks `root` if it exists (a dry run creates nothing); `None` when it does not.
    pub fn acquire_existing(root: &Path) -> Result<Option<Self>, RunError> {
        if root.exists() {
            Self::acquire(root).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Its checkpoint folder.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join(store::DIR_NAME)
    }

    /// Its metrics log.
    pub fn metrics(&self) -> MetricsLog {
        MetricsLog::new(self.root.join(METRICS_FILE))
    }

    /// Gives the folder back as it was found: a folder this process created and left empty
    /// is removed (a refused run leaves the disk as it found it).
    pub fn release_unused(self) {
        let Some(outermost) = &self.created else { return };
        // Only empty folders go, innermost first; anything else stays.
        for dir in self.root.ancestors() {
            if std::fs::remove_dir(dir).is_err() || dir == outermost {
                break;
            }
        }
    }

    /// Readies the folder for training from step `step`: removes temporaries left by an
    /// interrupted write, writes the user's configuration, and cuts the metrics log back
    /// to the lines at or before `step` (a resumed run rewrites what came after).
    pub fn prepare(&self, cfg: &UserConfig, step: u64) -> Result<MetricsLog, RunError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RunError::Io { path, source }
        };
        for dir in [self.root.clone(), self.checkpoints()] {
            let removed = store::remove_stale_temporaries(&dir)?;
            if removed > 0 {
                tracing::warn!(dir = %dir.display(), removed, "removed temporary files left by an interrupted write");
            }
        }
        let config_path = self.root.join(CONFIG_FILE);
        let yaml = serde_yaml::to_string(&**cfg).expect("the config schema serializes to YAML");
        metrics::write_atomic(&config_path, yaml.as_bytes()).map_err(io(&config_path))?;
        let log = self.metrics();
        log.truncate_after(step).map_err(io(&self.root.join(METRICS_FILE)))?;
        Ok(log)
    }
}

impl RunFolder {
    /// Cuts `log` back to the furthest position any checkpoint in the folder holds (after a
    /// failed save). Best effort: the run is failing already, and the next start truncates
    /// to the checkpoint it resumes from anyway.
    pub fn truncate_metrics_to_checkpoints(&self, log: &MetricsLog) {
        let step = store::candidates(&self.checkpoints())
            .ok()
            .and_then(|c| c.loadable.first().and_then(|f| f.meta().map(|m| m.step())))
            .unwrap_or(0);
        if let Err(e) = log.truncate_after(step) {
            tracing::warn!("cannot cut {} back to step {step}: {e}", log.path().display());
        }
    }

    /// After a run failed before it wrote anything worth keeping (no checkpoint file, no
    /// metrics line): takes back what [`Self::prepare`] wrote (the configuration, the empty
    /// metrics log, an empty checkpoint folder) and releases the folder as
    /// [`Self::release_unused`] does, so a failed first start leaves no folder holding only
    /// `config.yaml`. A folder with a checkpoint, or metrics to report (a diverged run's
    /// event), is left as it is.
    pub fn release_if_nothing_saved(self) {
        let checkpoints = self.checkpoints();
        let saved = std::fs::read_dir(&checkpoints).is_ok_and(|mut d| d.next().is_some());
        let logged = std::fs::metadata(self.root.join(METRICS_FILE)).is_ok_and(|m| m.len() > 0);
        if saved || logged {
            return;
        }
        let _ = std::fs::remove_dir(&checkpoints);
        for name in [CONFIG_FILE, METRICS_FILE] {
            let _ = std::fs::remove_file(self.root.join(name));
        }
        self.release_unused();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_second_holder_is_refused_while_the_first_holds_the_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("run");
        let first = RunFolder::acquire(&root).unwrap();
        assert!(matches!(RunFolder::acquire(&root), Err(RunError::Busy { .. })));
        drop(first);
        RunFolder::acquire(&root).unwrap();
    }

    #[test]
    fn a_file_in_the_way_is_a_usage_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run");
        std::fs::write(&path, b"x").unwrap();
        let err = RunFolder::acquire(&path).err().unwrap();
        assert!(matches!(err, RunError::NotAFolder { .. }) && err.is_usage(), "{err}");
    }

    #[test]
    fn a_first_start_that_saved_nothing_takes_back_its_config_and_metrics() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("runs/run");
        let folder = RunFolder::acquire(&root).unwrap();
        folder.prepare(&UserConfig::new(Config::default()), 0).unwrap();
        std::fs::create_dir_all(folder.checkpoints()).unwrap();
        assert!(root.join(CONFIG_FILE).exists());
        folder.release_if_nothing_saved();
        assert!(!tmp.path().join("runs").exists(), "nothing of the failed start is left");

        let folder = RunFolder::acquire(&root).unwrap();
        folder.prepare(&UserConfig::new(Config::default()), 0).unwrap();
        std::fs::create_dir_all(folder.checkpoints()).unwrap();
        std::fs::write(folder.checkpoints().join("latest.safetensors"), b"x").unwrap();
        folder.release_if_nothing_saved();
        assert!(root.join(CONFIG_FILE).exists(), "a folder with a checkpoint keeps its config");
    }

    #[test]
    fn a_folder_created_and_left_empty_is_removed_on_release() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("runs/run");
        RunFolder::acquire(&root).unwrap().release_unused();
        assert!(!tmp.path().join("runs").exists(), "the parent it made goes too");
        std::fs::create_dir_all(&root).unwrap();
        RunFolder::acquire(&root).unwrap().release_unused();
        assert!(root.exists(), "a folder that was there before stays");
    }
}

//! The two configurations of a run, kept apart by type: the user's ([`UserConfig`]) and the
//! one the run is planned with ([`PlannedConfig`]). They differ in a data-parallel job only,
//! where `training.batch_size` is per rank in the user's and the global batch in the
//! planned one; a function's signature says which one it reads.

use std::ops::Deref;

use sha2::{Digest, Sha256};

use crate::config::Config;

/// The configuration as the user resolved it (config file, profile, environment, flags):
/// what the run folder's `config.yaml` holds, what a checkpoint's `config_sha256` hashes,
/// and what the ranks of a job compare. `training.batch_size` is per rank.
#[derive(Debug, Clone)]
pub struct UserConfig(Config);

/// The configuration the run is planned and trained with: the user's, with
/// `training.batch_size` the global batch of a data-parallel job (per rank × world). The
/// epoch order, the steps per epoch, the schedule and a checkpoint's position are those of
/// one process training with that batch, so a checkpoint of a 2 × B job resumes in a
/// 1 × 2B run and back. The same as the user's for a single process.
#[derive(Debug, Clone)]
pub struct PlannedConfig(Config);

impl UserConfig {
    /// The user's configuration, as resolved.
    pub fn new(config: Config) -> Self {
        Self(config)
    }

    /// The configuration a job of `world` processes is planned with (see [`PlannedConfig`]).
    pub fn plan(&self, world: u32) -> PlannedConfig {
        let mut planned = self.0.clone();
        if world > 1 {
            planned.training.batch_size = self.0.training.batch_size * world;
        }
        PlannedConfig(planned)
    }

    /// SHA-256 of its JSON form, recorded in checkpoints ([`config_sha256`]).
    pub fn sha256(&self) -> String {
        config_sha256(&self.0)
    }
}

impl Deref for UserConfig {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.0
    }
}

impl Deref for PlannedConfig {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.0
    }
}

/// SHA-256 of the configuration's JSON form, recorded in checkpoints.
pub fn config_sha256(config: &Config) -> String {
    let json = serde_json::to_vec(config).expect("the config schema serializes to JSON");
    Sha256::digest(json).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_planned_with_the_global_batch() {
        let mut cfg = Config::default();
        cfg.training.batch_size = 8;
        let user = UserConfig::new(cfg);
        assert_eq!(user.plan(1).training.batch_size, 8);
        assert_eq!(user.plan(4).training.batch_size, 32);
        assert_eq!(user.training.batch_size, 8, "the user's stays per rank");
    }
}

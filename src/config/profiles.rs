//! The built-in profiles `standard`, `balanced` and `ultra_low_memory`.
//!
//! They live as YAML under `configs/profiles/` (so users can read and copy them) and are
//! embedded in the binary. Their `memory:` values follow the seed guide's table.

/// A built-in profile.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    /// The name `--experiment` selects it by.
    pub name: &'static str,
    /// One line on when to use it.
    pub summary: &'static str,
    /// The YAML it layers over the built-in defaults.
    pub yaml: &'static str,
}

/// Every built-in profile, cheapest on memory last.
pub const PROFILES: &[Profile] = &[
    Profile {
        name: "standard",
        summary: "plenty of GPU memory: load straight to the device, optimizer state in every checkpoint",
        yaml: include_str!("../../configs/profiles/standard.yaml"),
    },
    Profile {
        name: "balanced",
        summary: "moderate GPU memory: stream checkpoints tensor by tensor, optimizer state only in `latest`",
        yaml: include_str!("../../configs/profiles/balanced.yaml"),
    },
    Profile {
        name: "ultra_low_memory",
        summary: "scarce GPU memory: also skip optimizer state on load (momentum restarts) and compress checkpoints",
        yaml: include_str!("../../configs/profiles/ultra_low_memory.yaml"),
    },
];

/// The built-in profile of that name.
pub fn profile(name: &str) -> Option<&'static Profile> {
    PROFILES.iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// Each profile, applied over the defaults, gives the seed guide's memory settings.
    #[test]
    fn profiles_follow_the_seed_guides_table() {
        let memory = |name: &str| {
            let yaml: serde_yaml::Value = serde_yaml::from_str(profile(name).unwrap().yaml).unwrap();
            let m = &yaml["memory"];
            (
                m["checkpoint_memory_efficient"].as_bool().unwrap(),
                m["load_optimizer_state"].as_bool().unwrap(),
                m["compress_checkpoints"].as_bool().unwrap(),
                m["save_optimizer_in_epoch_checkpoints"].as_bool().unwrap(),
            )
        };
        assert_eq!(memory("standard"), (false, true, false, true));
        assert_eq!(memory("balanced"), (true, true, false, false));
        assert_eq!(memory("ultra_low_memory"), (true, false, true, false));
    }

    #[test]
    fn every_profile_parses_against_the_schema() {
        for p in PROFILES {
            let _: Config = serde_yaml::from_str(p.yaml).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        }
    }
}

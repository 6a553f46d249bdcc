//! Which process of which job this is: the launch conventions users already have, read
//! from the environment by a pure function ([`detect`]) so every rule is tested without
//! starting processes.
//!
//! | launcher | rank / world | local rank | store address | port |
//! |---|---|---|---|---|
//! | torchrun (or by hand) | `RANK` / `WORLD_SIZE` | `LOCAL_RANK` (else `RANK`: one node) | `MASTER_ADDR` | `MASTER_PORT` |
//! | srun | `SLURM_PROCID` / `SLURM_STEP_NUM_TASKS`, else `SLURM_NTASKS` | `SLURM_LOCALID` | `MASTER_ADDR`, else the first host of `SLURM_JOB_NODELIST` | `MASTER_PORT`, else [`SLURM_PORT_BASE`] + `SLURM_JOB_ID` mod [`SLURM_PORT_SPAN`] |
//!
//! torchrun's variables win over Slurm's (torchrun started by srun). A Slurm step of one
//! task is a single process, as is an environment with neither: exactly as without this
//! module. torchrun with `WORLD_SIZE=1` still forms a (one-rank) process group, so a
//! world-size-1 smoke test exercises the engine.

use std::fmt;

use super::hostlist::first_host;

/// The port range a Slurm job's store port is derived from when `MASTER_PORT` is unset:
/// above the ephemeral-port floor some clusters lower to 10000, below Linux's default
/// ephemeral range (32768 and up), so two jobs on one node rarely collide.
pub const SLURM_PORT_BASE: u32 = 12000;
/// See [`SLURM_PORT_BASE`].
pub const SLURM_PORT_SPAN: u32 = 20000;

/// Which convention the rank and world came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `RANK`/`WORLD_SIZE` (torchrun, or set by hand).
    Torchrun,
    /// `SLURM_PROCID`/`SLURM_NTASKS` (srun).
    Slurm,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Torchrun => "torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)",
            Self::Slurm => "slurm (SLURM_PROCID, SLURM_NTASKS, SLURM_JOB_NODELIST)",
        })
    }
}

/// This process's place in a data-parallel job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Global rank, `0..world`.
    pub rank: u32,
    /// Number of processes in the job.
    pub world: u32,
    /// Rank on this node: the GPU index it trains on.
    pub local_rank: u32,
    /// Host of the rendezvous store (rank 0's node).
    pub master_addr: String,
    /// Its port.
    pub master_port: u16,
    /// Where these came from.
    pub source: Source,
    /// torchrun's agent already hosts the store (`TORCHELASTIC_USE_AGENT_STORE=True`): rank 0
    /// connects to it as a client instead of starting a second one on the same port.
    pub agent_store: bool,
    /// torchrun's restart count (`TORCHELASTIC_RESTART_COUNT`), which namespaces the store's
    /// keys so a restarted job does not read the previous attempt's.
    pub restart: u32,
}

impl Launch {
    /// Whether this process starts the store's server.
    pub fn hosts_store(&self) -> bool {
        self.rank == 0 && !self.agent_store
    }
}

/// A launch environment that cannot be used; names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {message}")]
pub struct LaunchError {
    /// The environment variable at fault.
    pub var: String,
    /// What is wrong and what to do.
    pub message: String,
}

fn err<T>(var: &str, message: impl Into<String>) -> Result<T, LaunchError> {
    Err(LaunchError { var: var.into(), message: message.into() })
}

/// Reads the launch from environment variables (`get` returns a variable's value). `None`:
/// a single process.
pub fn detect(get: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>, LaunchError> {
    let num = |var: &str| -> Result<Option<u32>, LaunchError> {
        match get(var) {
            None => Ok(None),
            Some(v) => match v.trim().parse::<u32>() {
                Ok(n) => Ok(Some(n)),
                Err(_) => err(var, format!("is {v:?}, not a whole number")),
            },
        }
    };
    let port = |var: &str, v: &str| -> Result<u16, LaunchError> {
        match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => err(var, format!("is {v:?}, not a port number (1-65535)")),
        }
    };
    let agent_store = get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True");
    let restart = num("TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0);
    let (rank, world, local_rank, source, master_addr, master_port) =
        if get("RANK").is_some() || get("WORLD_SIZE").is_some() {
            let Some(rank) = num("RANK")? else { return err("RANK", "is not set, but WORLD_SIZE is") };
            let Some(world) = num("WORLD_SIZE")? else { return err("WORLD_SIZE", "is not set, but RANK is") };
            let Some(addr) = get("MASTER_ADDR").filter(|a| !a.trim().is_empty()) else {
                return err(
                    "MASTER_ADDR",
                    "is not set: the host of rank 0 (torchrun sets it; by hand, e.g. MASTER_ADDR=127.0.0.1)",
                );
            };
            let Some(p) = get("MASTER_PORT") else {
                return err("MASTER_PORT", "is not set: a free TCP port on rank 0's host, e.g. MASTER_PORT=29500");
            };
            let local = num("LOCAL_RANK")?.unwrap_or(rank);
            (rank, world, local, Source::Torchrun, addr.trim().to_string(), port("MASTER_PORT", &p)?)
        } else if get("SLURM_PROCID").is_some() {
            let Some(rank) = num("SLURM_PROCID")? else { unreachable!("checked above") };
            // A step started with fewer tasks than the allocation has its own count.
            let world = match num("SLURM_STEP_NUM_TASKS")? {
                Some(w) => w,
                None => match num("SLURM_NTASKS")? {
                    Some(w) => w,
                    None => return Ok(None),
                },
            };
            if world <= 1 {
                return Ok(None);
            }
            let local = num("SLURM_LOCALID")?.unwrap_or(0);
            let addr = match get("MASTER_ADDR").filter(|a| !a.trim().is_empty()) {
                Some(a) => a.trim().to_string(),
                None => {
                    let (var, list) = match (get("SLURM_JOB_NODELIST"), get("SLURM_NODELIST")) {
                        (Some(l), _) => ("SLURM_JOB_NODELIST", l),
                        (None, Some(l)) => ("SLURM_NODELIST", l),
                        (None, None) => {
                            return err(
                                "SLURM_JOB_NODELIST",
                                "is not set and neither is MASTER_ADDR: no host for rank 0's store",
                            )
                        }
                    };
                    match first_host(&list) {
                        Ok(h) => h,
                        Err(why) => return err(var, format!("{list:?} is not a Slurm host list: it {why}")),
                    }
                }
            };
            let p = match get("MASTER_PORT") {
                Some(p) => port("MASTER_PORT", &p)?,
                None => match num("SLURM_JOB_ID")? {
                    Some(id) => (SLURM_PORT_BASE + id % SLURM_PORT_SPAN) as u16,
                    None => return err("MASTER_PORT", "is not set and neither is SLURM_JOB_ID to derive it from"),
                },
            };
            (rank, world, local, Source::Slurm, addr, p)
        } else {
            return Ok(None);
        };
    let (rank_var, world_var) = match source {
        Source::Torchrun => ("RANK", "WORLD_SIZE"),
        Source::Slurm => ("SLURM_PROCID", "SLURM_NTASKS"),
    };
    if world == 0 {
        return err(world_var, "is 0: a job has at least one process");
    }
    if rank >= world {
        return err(rank_var, format!("is {rank}, not below {world_var}={world}: ranks are 0..{}", world - 1));
    }
    Ok(Some(Launch { rank, world, local_rank, master_addr, master_port, source, agent_store, restart }))
}

/// [`detect`] on this process's environment.
pub fn detect_from_env() -> Result<Option<Launch>, LaunchError> {
    detect(|var| std::env::var(var).ok())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    const TORCHRUN: &[(&str, &str)] = &[
        ("RANK", "1"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "node7"),
        ("MASTER_PORT", "29400"),
        ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ("TORCHELASTIC_RESTART_COUNT", "2"),
    ];

    #[test]
    fn nothing_set_is_a_single_process() {
        assert_eq!(detect(env(&[("HOME", "/root")])), Ok(None));
    }

    #[test]
    fn torchrun_variables_give_rank_world_and_the_agent_store() {
        let l = detect(env(TORCHRUN)).unwrap().unwrap();
        assert_eq!((l.rank, l.world, l.local_rank, l.master_port), (1, 4, 1, 29400));
        assert_eq!((l.master_addr.as_str(), l.source, l.restart), ("node7", Source::Torchrun, 2));
        assert!(l.agent_store);
        assert!(!l.hosts_store());
    }

    #[test]
    fn rank_zero_hosts_the_store_unless_torchruns_agent_does() {
        let mut vars = TORCHRUN.to_vec();
        vars[0] = ("RANK", "0");
        assert!(!detect(env(&vars)).unwrap().unwrap().hosts_store());
        vars.retain(|(k, _)| *k != "TORCHELASTIC_USE_AGENT_STORE");
        assert!(detect(env(&vars)).unwrap().unwrap().hosts_store());
    }

    #[test]
    fn a_missing_master_addr_is_named() {
        let vars: Vec<_> = TORCHRUN.iter().copied().filter(|(k, _)| *k != "MASTER_ADDR").collect();
        assert_eq!(detect(env(&vars)).unwrap_err().var, "MASTER_ADDR");
    }

    #[test]
    fn a_rank_not_below_the_world_is_refused() {
        let e =
            detect(env(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")])).unwrap_err();
        assert_eq!(e.var, "RANK");
        assert!(e.message.contains("not below WORLD_SIZE=2"), "{e}");
    }

    #[test]
    fn bad_numbers_and_ports_are_named() {
        let base = [("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")];
        for (var, value) in [("MASTER_PORT", "70000"), ("MASTER_PORT", "0"), ("WORLD_SIZE", "two")] {
            let mut vars = base.to_vec();
            vars.retain(|(k, _)| *k != var);
            vars.push((var, value));
            if var != "MASTER_PORT" {
                vars.push(("MASTER_PORT", "29500"));
            }
            assert_eq!(detect(env(&vars)).unwrap_err().var, var, "{var}={value}");
        }
    }

    #[test]
    fn slurm_takes_the_first_node_and_derives_the_port_from_the_job() {
        let l = detect(env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NODEID", "2"),
            ("SLURM_JOB_NODELIST", "gpu[01-04,07]"),
            ("SLURM_JOB_ID", "123456"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world, l.local_rank), (5, 8, 1));
        assert_eq!(l.master_addr, "gpu01");
        assert_eq!(u32::from(l.master_port), SLURM_PORT_BASE + 123456 % SLURM_PORT_SPAN);
        assert_eq!(l.source, Source::Slurm);
        assert!(!l.agent_store);
    }

    #[test]
    fn slurm_honours_master_addr_and_port_and_the_steps_task_count() {
        let l = detect(env(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_STEP_NUM_TASKS", "2"),
            ("SLURM_JOB_NODELIST", "gpu[01-04]"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29511"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((l.world, l.master_addr.as_str(), l.master_port), (2, "127.0.0.1", 29511));
    }

    #[test]
    fn a_slurm_step_of_one_task_is_a_single_process() {
        assert_eq!(detect(env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1"), ("SLURM_JOB_ID", "9")])), Ok(None));
    }

    #[test]
    fn torchrun_under_srun_wins() {
        let mut vars = TORCHRUN.to_vec();
        vars.extend([("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2"), ("SLURM_JOB_NODELIST", "x[1-2]")]);
        assert_eq!(detect(env(&vars)).unwrap().unwrap().source, Source::Torchrun);
    }

    #[test]
    fn a_malformed_slurm_nodelist_is_an_error_naming_the_variable_and_value() {
        let e = detect(env(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_JOB_NODELIST", "gpu[01-"),
            ("SLURM_JOB_ID", "7"),
        ]))
        .unwrap_err();
        assert_eq!(e.var, "SLURM_JOB_NODELIST");
        assert!(e.to_string().contains("\"gpu[01-\" is not a Slurm host list"), "{e}");
    }
}

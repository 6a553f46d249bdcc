//! How much host memory there is: the host's and this process's through `/proc`, and the
//! limit of this process's memory cgroup through `/sys`. Here, beside the strategy rule it
//! feeds, so that `train` and the Python package read the same figure.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Host memory, from `/proc/meminfo` and `/proc/self/status` (Linux), and this process's
/// memory cgroup (v2 or v1) where one limits it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostMemory {
    /// What can be allocated without swapping or being killed: the host's `MemAvailable`,
    /// or the cgroup's limit less its usage when that is smaller.
    pub available: Option<u64>,
    /// The memory cgroup folder whose limit made `available` (`None`: the host's figure).
    pub cgroup: Option<PathBuf>,
    /// This process's resident set now (`VmRSS`).
    pub rss: Option<u64>,
    /// This process's peak resident set (`VmHWM`).
    pub peak_rss: Option<u64>,
}

impl HostMemory {
    /// Where `available` comes from, for errors: "host memory" or the cgroup's limit.
    pub fn available_from(&self) -> String {
        match &self.cgroup {
            None => "host memory".into(),
            Some(dir) => format!("memory under the cgroup limit of {} (its limit less its usage)", dir.display()),
        }
    }
}

/// Reads the host's and this process's memory.
pub fn host() -> HostMemory {
    host_under(Path::new("/"))
}

/// [`host`], reading `/proc` and `/sys` under `root` (tests point it at a fake tree).
pub fn host_under(root: &Path) -> HostMemory {
    let kib = |text: &str, key: &str| -> Option<u64> {
        let line = text.lines().find_map(|l| l.strip_prefix(key))?;
        Some(line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()? * 1024)
    };
    let meminfo = std::fs::read_to_string(root.join("proc/meminfo")).unwrap_or_default();
    let status = std::fs::read_to_string(root.join("proc/self/status")).unwrap_or_default();
    let host = kib(&meminfo, "MemAvailable:");
    let (available, cgroup) = match (host, cgroup_headroom(root)) {
        (Some(h), Some((c, dir))) if c < h => (Some(c), Some(dir)),
        (None, Some((c, dir))) => (Some(c), Some(dir)),
        (h, _) => (h, None),
    };
    HostMemory { available, cgroup, rss: kib(&status, "VmRSS:"), peak_rss: kib(&status, "VmHWM:") }
}

/// The least headroom (limit less usage) of this process's memory cgroup and its ancestors,
/// and the folder that has it; `None` where no cgroup limits memory.
///
/// cgroup v2: `/proc/self/cgroup` holds `0::/PATH`; the files are
/// `/sys/fs/cgroup/PATH/memory.max` (`max`: no limit) and `memory.current` (under
/// `/sys/fs/cgroup/unified/` on hybrid hosts). v1: a line
/// `N:...memory...:/PATH`; the files are `/sys/fs/cgroup/memory/PATH/memory.limit_in_bytes`
/// and `memory.usage_in_bytes`. Inside a container the path may name the host's hierarchy
/// while the container sees its own cgroup at the mount's root, so the root is read too.
fn cgroup_headroom(root: &Path) -> Option<(u64, PathBuf)> {
    let table = std::fs::read_to_string(root.join("proc/self/cgroup")).ok()?;
    let read = |file: PathBuf| -> Option<u64> { std::fs::read_to_string(file).ok()?.trim().parse().ok() };
    let mut best: Option<(u64, PathBuf)> = None;
    for line in table.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let (mount, limit_file, usage_file) = if controllers.is_empty() {
            // Hybrid hosts mount v2 at `unified/` beside the v1 controllers.
            let hybrid = root.join("sys/fs/cgroup/unified");
            let mount = if hybrid.is_dir() { hybrid } else { root.join("sys/fs/cgroup") };
            (mount, "memory.max", "memory.current")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("sys/fs/cgroup/memory"), "memory.limit_in_bytes", "memory.usage_in_bytes")
        } else {
            continue;
        };
        let dir = mount.join(path.trim_start_matches('/'));
        for level in dir.ancestors().take_while(|d| d.starts_with(&mount)) {
            // `max` (v2) does not parse: no limit at this level.
            let (Some(limit), Some(usage)) = (read(level.join(limit_file)), read(level.join(usage_file))) else {
                continue;
            };
            let headroom = limit.saturating_sub(usage);
            if best.as_ref().is_none_or(|(b, _)| headroom < *b) {
                let shown = Path::new("/").join(level.strip_prefix(root).unwrap_or(level));
                best = Some((headroom, shown));
            }
        }
    }
    best
}

/// Resets this process's peak resident set (`VmHWM`) to its current size, so a later
/// [`host`] reports the peak of what came after. Returns false where the kernel refuses.
pub fn reset_peak_rss() -> bool {
    // Writing "5" to clear_refs resets the peak RSS (Linux >= 4.0, see proc(5)).
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_figures_are_read_on_linux() {
        let h = host();
        assert!(h.available.unwrap() > 0 && h.rss.unwrap() > 0 && h.peak_rss.unwrap() >= h.rss.unwrap());
    }

    /// A fake root holding `files` (path under the root, contents).
    fn fake_root(files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = root.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        root
    }

    const MEMINFO: (&str, &str) = ("proc/meminfo", "MemTotal: 32000000 kB\nMemAvailable: 22000000 kB\n");

    #[test]
    fn a_cgroup_v2_limit_below_host_memory_is_what_is_available() {
        let root = fake_root(&[
            MEMINFO,
            ("proc/self/cgroup", "0::/user.slice/job-7\n"),
            ("sys/fs/cgroup/user.slice/job-7/memory.max", "900000000\n"),
            ("sys/fs/cgroup/user.slice/job-7/memory.current", "100000000\n"),
            ("sys/fs/cgroup/user.slice/memory.max", "max\n"),
            ("sys/fs/cgroup/user.slice/memory.current", "5000000000\n"),
        ]);
        let h = host_under(root.path());
        assert_eq!(h.available, Some(800_000_000));
        assert_eq!(h.cgroup.as_deref(), Some(Path::new("/sys/fs/cgroup/user.slice/job-7")));
        assert!(
            h.available_from().contains("cgroup limit of /sys/fs/cgroup/user.slice/job-7"),
            "{}",
            h.available_from()
        );
    }

    #[test]
    fn a_hybrid_host_reads_v2_limits_under_unified() {
        let root = fake_root(&[
            MEMINFO,
            ("proc/self/cgroup", "4:memory:/\n0::/job\n"),
            ("sys/fs/cgroup/unified/job/memory.max", "3000000\n"),
            ("sys/fs/cgroup/unified/job/memory.current", "1000000\n"),
        ]);
        let h = host_under(root.path());
        assert_eq!(
            (h.available, h.cgroup.as_deref()),
            (Some(2_000_000), Some(Path::new("/sys/fs/cgroup/unified/job")))
        );
    }

    #[test]
    fn a_tighter_parent_cgroup_wins_and_max_means_no_limit() {
        let root = fake_root(&[
            MEMINFO,
            ("proc/self/cgroup", "0::/a/b\n"),
            ("sys/fs/cgroup/a/b/memory.max", "max\n"),
            ("sys/fs/cgroup/a/b/memory.current", "1000\n"),
            ("sys/fs/cgroup/a/memory.max", "2000000\n"),
            ("sys/fs/cgroup/a/memory.current", "500000\n"),
        ]);
        let h = host_under(root.path());
        assert_eq!((h.available, h.cgroup.as_deref()), (Some(1_500_000), Some(Path::new("/sys/fs/cgroup/a"))));
    }

    #[test]
    fn a_cgroup_v1_limit_is_read_from_the_memory_controller() {
        let root = fake_root(&[
            MEMINFO,
            ("proc/self/cgroup", "12:cpu,cpuacct:/x\n4:memory:/docker/abc\n"),
            ("sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", "1073741824\n"),
            ("sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes", "73741824\n"),
        ]);
        assert_eq!(host_under(root.path()).available, Some(1_000_000_000));
    }

    #[test]
    fn without_a_cgroup_limit_the_host_figure_stands() {
        // v1's "unlimited" is a huge number; v2's is `max`.
        let root = fake_root(&[
            MEMINFO,
            ("proc/self/cgroup", "4:memory:/\n0::/\n"),
            ("sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n"),
            ("sys/fs/cgroup/memory/memory.usage_in_bytes", "5000\n"),
            ("sys/fs/cgroup/memory.max", "max\n"),
            ("sys/fs/cgroup/memory.current", "5000\n"),
        ]);
        let h = host_under(root.path());
        assert_eq!((h.available, h.cgroup.clone()), (Some(22_000_000 * 1024), None));
        assert_eq!(h.available_from(), "host memory");
    }

    /// The peak is a whole-process figure and the other tests run on threads of this
    /// process, so a neighbour's freed buffer can lift the peak measured here (one CI run
    /// failed so). The measurement therefore runs alone, in a child process of this test
    /// binary that runs only [`peak_rss_in_a_process_of_its_own`].
    #[test]
    fn peak_rss_resets_and_then_tracks_growth() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "host::tests::peak_rss_in_a_process_of_its_own", "--ignored", "--nocapture"])
            .env("TRAIN_PEAK_RSS_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
    }

    #[test]
    #[ignore = "run alone by peak_rss_resets_and_then_tracks_growth"]
    fn peak_rss_in_a_process_of_its_own() {
        assert_eq!(std::env::var("TRAIN_PEAK_RSS_CHILD").as_deref(), Ok("1"), "run by its parent test only");
        let big = vec![1u8; 96 << 20];
        std::hint::black_box(&big);
        let high = host().peak_rss.unwrap();
        drop(big);
        if !reset_peak_rss() {
            eprintln!("skipped: clear_refs not writable here");
            return;
        }
        let before = host().peak_rss.unwrap();
        assert!(before + (90 << 20) <= high, "the reset left the peak at {before}, was {high}");
        let v = vec![1u8; 64 << 20];
        std::hint::black_box(&v);
        assert!(host().peak_rss.unwrap() >= before + (60 << 20));
    }
}

//! The other ranks' processes: which host and pid each is, and whether it still runs.

/// A rank's host and process id, shared through the store at the start: when a collective
/// fails, a rank on the same host whose process has exited is the one to name.
#[derive(Debug, Clone)]
pub(super) struct Peer {
    pub(super) host: String,
    pub(super) pid: i32,
}

pub(super) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    std::ffi::CStr::from_bytes_until_nul(&buf).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Whether process `pid` runs: it exists and is not a zombie waiting for its parent (a
/// killed rank stays one until torchrun or srun reaps it).
pub(super) fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 sends nothing; it only asks whether the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    // The state follows the command name in parentheses, which may itself hold spaces.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            !matches!(stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()), Some('Z' | 'X'))
        }
        Err(_) => true,
    }
}

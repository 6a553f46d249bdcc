//! SIGTERM and SIGINT: the first asks the run to stop at the next step boundary, save
//! `latest` and exit with [`EXIT_INTERRUPTED`] (75); a second one while the save
//! is still pending ends the process at once with 130 (128 + SIGINT, as a shell reports it),
//! leaving the previous `latest` intact, since checkpoint writes are atomic. Once the final
//! save is done ([`StopFlag::settle`]), further signals change nothing: the exit is 75.
//!
//! Start-up is covered from the first instruction of `train` on: [`early`] installs a
//! handler before libtorch's static initialisers run (most of the ~0.25 s before `main`),
//! which only records the signal. A run then calls [`early::exit_during_start_up`]: until
//! training begins ([`StopFlag::begin_training`]), a signal ends the process at once with
//! 75, from inside the handler, wherever start-up is (parsing the config, decoding the
//! data, loading a checkpoint: each can take seconds, and none checks a flag). Start-up
//! writes nothing, so there is nothing to save or lose; the run folder, if start-up made
//! it, is removed while still empty ([`forget_on_start_up_exit`]). Commands other than a
//! run give the signals back their default action with [`early::release`], which re-raises
//! a signal that arrived meanwhile.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::SigId;

/// Exit status of a process ended by a second signal before its save finished.
pub const EXIT_SECOND_SIGNAL: i32 = 130;

/// Exit code of a run stopped by SIGTERM/SIGINT after saving `latest`, or during start-up
/// with nothing to save: job scripts requeue on it (`EX_TEMPFAIL` from sysexits.h: "try
/// again later"). `train::app` re-exports it beside the other exit codes.
pub const EXIT_INTERRUPTED: u8 = 75;

/// Set by SIGTERM or SIGINT.
pub struct StopFlag {
    flag: Arc<AtomicBool>,
    /// The "second signal ends the process" handlers, removed by [`StopFlag::settle`].
    hard_stops: Vec<SigId>,
    /// The handlers that set the flag; never removed, so a late signal is caught and
    /// ignored rather than killing the process with its default action.
    _flag_setters: Vec<SigId>,
}

/// Whether a signal now ends the process at once (the run is starting up).
static STARTING_UP: AtomicBool = AtomicBool::new(false);

/// Empty folders to remove when a signal ends start-up, innermost first (a leaked,
/// NUL-terminated list the handler only reads; null: none).
static FOLDERS_TO_FORGET: AtomicPtr<Vec<CString>> = AtomicPtr::new(std::ptr::null_mut());

/// Start-up made these folders (the run folder, and the parents it created), innermost
/// first: a signal that ends start-up removes them while they are empty.
pub fn forget_on_start_up_exit(folders: &[std::path::PathBuf]) {
    let list: Vec<CString> =
        folders.iter().filter_map(|p| CString::new(p.as_os_str().as_encoded_bytes()).ok()).collect();
    // Leaked on purpose: a handler may read it at any moment, so it is never freed.
    let list = Box::into_raw(Box::new(list));
    FOLDERS_TO_FORGET.store(list, Ordering::SeqCst);
}

/// The start-up exit, from a signal handler: only async-signal-safe calls (rmdir, write,
/// _exit) on data prepared beforehand.
fn exit_if_starting_up() {
    if !STARTING_UP.load(Ordering::SeqCst) {
        return;
    }
    let folders = FOLDERS_TO_FORGET.load(Ordering::SeqCst);
    if !folders.is_null() {
        // SAFETY: set once from a leaked Box and never freed; the Vec is not mutated after.
        for dir in unsafe { &*folders } {
            // SAFETY: a NUL-terminated path; rmdir fails harmlessly on a folder in use.
            if unsafe { libc::rmdir(dir.as_ptr()) } != 0 {
                break;
            }
        }
    }
    const MESSAGE: &[u8] = b"stopped by a signal during start-up: nothing was written (exit 75)\n";
    // SAFETY: write(2) and _exit(2) are async-signal-safe.
    unsafe {
        libc::write(2, MESSAGE.as_ptr().cast(), MESSAGE.len());
        libc::_exit(i32::from(EXIT_INTERRUPTED));
    }
}

impl StopFlag {
    /// Installs the handlers. Until [`Self::begin_training`], a signal ends the process
    /// with 75 (see the module's doc).
    pub fn install() -> std::io::Result<Self> {
        let flag = Arc::new(AtomicBool::new(early::received().is_some()));
        let mut hard_stops = Vec::new();
        let mut flag_setters = Vec::new();
        for signal in [SIGTERM, SIGINT] {
            // SAFETY: the action only calls async-signal-safe functions (see above).
            let id = unsafe { signal_hook::low_level::register(signal, exit_if_starting_up) }?;
            flag_setters.push(id);
            // Registered first, so it sees the flag as it was before this signal set it.
            hard_stops.push(signal_hook::flag::register_conditional_shutdown(
                signal,
                EXIT_SECOND_SIGNAL,
                Arc::clone(&flag),
            )?);
            flag_setters.push(signal_hook::flag::register(signal, Arc::clone(&flag))?);
        }
        Ok(Self { flag, hard_stops, _flag_setters: flag_setters })
    }

    /// Start-up is over and the run is about to write: from now on a signal asks for a
    /// stop at the next step boundary, with `latest` saved.
    pub fn begin_training(&self) {
        STARTING_UP.store(false, Ordering::SeqCst);
    }

    /// Whether a stop was requested.
    pub fn raised(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// The final save is done: a later signal no longer ends the process early (it would
    /// only turn a reported exit 75 into 130). The flag stays registered, so the signal is
    /// still caught rather than killing the process with its default action.
    pub fn settle(&mut self) {
        for id in self.hard_stops.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

impl Drop for StopFlag {
    fn drop(&mut self) {
        // The process is about to exit with the status the run decided; keep catching the
        // signals until then rather than restoring their default (killing) action.
        self.settle();
    }
}

/// The handler installed before `main`: records SIGTERM/SIGINT until a run takes over.
pub mod early {
    use std::sync::atomic::{AtomicI32, Ordering};

    /// The signal received before a run installed its handlers (0: none).
    static RECEIVED: AtomicI32 = AtomicI32::new(0);

    extern "C" fn record(signal: libc::c_int) {
        RECEIVED.store(signal, Ordering::SeqCst);
    }

    /// To run from the executable's `.preinit_array` (see `main.rs`): after the dynamic
    /// loader has mapped the libraries, before any of their initialisers (libtorch's
    /// register thousands of operators) and before `main`.
    pub extern "C" fn install() {
        for signal in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: `record` is async-signal-safe (one atomic store); nothing else has
            // installed a handler this early.
            unsafe { libc::signal(signal, record as extern "C" fn(libc::c_int) as libc::sighandler_t) };
        }
    }

    /// The signal received before a run took over, if any.
    pub fn received() -> Option<i32> {
        match RECEIVED.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    /// For a run: from now until training begins, a signal ends the process at once with
    /// 75 (nothing has been written); one that arrived before `main` does so now.
    pub fn exit_during_start_up() {
        crate::run::signals::STARTING_UP.store(true, Ordering::SeqCst);
        for signal in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: `exit_now` only calls async-signal-safe functions.
            unsafe { libc::signal(signal, exit_now as extern "C" fn(libc::c_int) as libc::sighandler_t) };
        }
        if received().is_some() {
            crate::run::signals::exit_if_starting_up();
        }
    }

    extern "C" fn exit_now(signal: libc::c_int) {
        record(signal);
        crate::run::signals::exit_if_starting_up();
    }

    /// For commands that are not a run: the signals get their default action back, and one
    /// that arrived meanwhile takes effect now (the process ends as it would have).
    pub fn release() {
        for signal in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: restoring the default disposition.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
        if let Some(signal) = received() {
            // SAFETY: raising a signal whose default action ends the process.
            unsafe { libc::raise(signal) };
        }
    }
}

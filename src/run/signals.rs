//! SIGTERM and SIGINT: the first asks the run to stop at the next step boundary, save
//! `latest` and exit with [`crate::app::EXIT_INTERRUPTED`] (75); a second one while the save
//! is still pending ends the process at once with 130 (128 + SIGINT, as a shell reports it),
//! leaving the previous `latest` intact, since checkpoint writes are atomic. Once the final
//! save is done ([`StopFlag::settle`]), further signals change nothing: the exit is 75.
//!
//! Start-up is covered from the first instruction of `train` on: [`early`] installs a
//! handler before libtorch's static initialisers run (most of the ~0.25 s before `main`),
//! which only records the signal; [`StopFlag::install`], at the start of a run, takes it
//! over, so a stop during start-up exits 75 too, with nothing to save. Commands other than a
//! run give the signals back their default action with [`early::release`], which re-raises a
//! signal that arrived meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::SigId;

/// Exit status of a process ended by a second signal before its save finished.
pub const EXIT_SECOND_SIGNAL: i32 = 130;

/// Set by SIGTERM or SIGINT.
pub struct StopFlag {
    flag: Arc<AtomicBool>,
    /// The "second signal ends the process" handlers, removed by [`StopFlag::settle`].
    hard_stops: Vec<SigId>,
    /// The handlers that set the flag; never removed, so a late signal is caught and
    /// ignored rather than killing the process with its default action.
    _flag_setters: Vec<SigId>,
}

impl StopFlag {
    /// Installs the handlers.
    pub fn install() -> std::io::Result<Self> {
        let flag = Arc::new(AtomicBool::new(early::received().is_some()));
        let mut hard_stops = Vec::new();
        let mut flag_setters = Vec::new();
        for signal in [SIGTERM, SIGINT] {
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

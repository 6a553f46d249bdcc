//! Out-of-memory handling hooks, and the fault injection that tests the recovery paths on
//! machines without a GPU.
//!
//! Injection exists only in builds with the `fault-injection` feature, which only the test
//! suite enables (a dev-dependency of the crate on itself). There, `INJECT_FAULTS` lists
//! faults, comma-separated: `oom-load:STRATEGY` fails every load with that strategy as a
//! CUDA out-of-memory error would; `oom-step:N` fails the first attempt of optimiser step N
//! (1-based); `oom-step-always:N` fails every attempt of step N (no recovery possible).

use std::path::Path;

use crate::checkpoint::CheckpointError;
use crate::memory::strategy::Strategy;

/// Whether an error message is libtorch's out-of-memory error (CUDA's or the CPU
/// allocator's).
pub fn is_oom_message(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("out of memory") || m.contains("outofmemoryerror") || m.contains("failed to allocate")
}

/// The message of a panic payload (libtorch errors arrive as panics from tch's infallible
/// calls, with the error as a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs `f`, turning a libtorch out-of-memory panic into `Err` with its message; any other
/// panic goes on unwinding. (tch's infallible calls panic with libtorch's error.)
pub fn catch_oom<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(value) => Ok(value),
        Err(panic) => {
            let msg = panic_message(panic.as_ref());
            if !is_oom_message(&msg) {
                std::panic::resume_unwind(panic);
            }
            Err(msg)
        }
    }
}

/// Keeps out-of-memory panics, which the training loop recovers from, out of stderr; any
/// other panic is printed as usual.
pub fn quiet_oom_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_oom_message(&panic_message(info.payload())) {
            previous(info);
        }
    }));
}

#[cfg(feature = "fault-injection")]
fn injected(kind: &str, value: &str) -> bool {
    std::env::var("INJECT_FAULTS").map(|v| v.split(',').any(|f| f.trim() == format!("{kind}:{value}"))).unwrap_or(false)
}

/// Fails a load as an out-of-memory error would, when so injected.
pub fn check_load(strategy: Strategy, path: &Path) -> Result<(), CheckpointError> {
    #[cfg(feature = "fault-injection")]
    if injected("oom-load", strategy.name()) {
        return Err(CheckpointError::Torch {
            path: path.to_path_buf(),
            source: tch::TchError::Torch(format!("CUDA out of memory (injected for {})", strategy.name())),
        });
    }
    let _ = (strategy, path);
    Ok(())
}

/// Panics as an out-of-memory error in a training step would, when so injected for global
/// step `step` (1-based).
pub fn check_step(step: u64) {
    #[cfg(feature = "fault-injection")]
    {
        use std::sync::atomic::{AtomicBool, Ordering};
        static FIRST_ATTEMPT_FAILED: AtomicBool = AtomicBool::new(false);
        let once = injected("oom-step", &step.to_string()) && !FIRST_ATTEMPT_FAILED.swap(true, Ordering::Relaxed);
        if once || injected("oom-step-always", &step.to_string()) {
            panic!("CUDA out of memory (injected at step {step})");
        }
    }
    let _ = step;
}

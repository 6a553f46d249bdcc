//! Out-of-memory handling hooks, and the fault injection that tests the recovery paths on
//! machines without a GPU.
//!
//! Injection exists only in builds with the `fault-injection` feature, which only the test
//! suite enables (a dev-dependency of the crate on itself). There, `INJECT_FAULTS` lists
//! faults, comma-separated: `oom-load:STRATEGY` fails every load with that strategy as a
//! CUDA out-of-memory error would; `oom-step:N` fails the first attempt of optimiser step N
//! (1-based); `oom-step-always:N` fails every attempt of step N (no recovery possible);
//! `kill-in-sharded-save:N` SIGKILLs the process in the sharded save at step N, after its
//! shard is written and before the other ranks hear of it.

/// Whether an error message is libtorch's out-of-memory error (CUDA's or the CPU
/// allocator's).
pub fn is_oom_message(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("out of memory") || m.contains("outofmemoryerror") || m.contains("failed to allocate")
}

/// How a failed TorchScript forward pass in training begins its panic message: the panic is
/// a libtorch error (the loop catches it and reports libtorch's line: see [`catch_torch`]),
/// not a bug of ours.
pub const FORWARD_FAILED: &str = "TorchScript forward failed";

/// The line of a libtorch message that says what went wrong: the message without the C++
/// stack frames that follow "Exception raised from", and for a TorchScript traceback its
/// final `...Error: ...` line, else its first line.
pub fn one_line(text: &str) -> String {
    let text = text.split("Exception raised from").next().unwrap_or_default();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines
        .iter()
        .rev()
        .find(|l| l.contains("Error: "))
        .or(lines.first())
        .map_or_else(|| "libtorch gave no message".to_string(), |l| l.to_string())
}

/// libtorch's error as one line (see [`one_line`]).
pub fn libtorch_message(e: &tch::TchError) -> String {
    let text = match e {
        tch::TchError::Torch(s) => s.clone(),
        other => other.to_string(),
    };
    one_line(&text)
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

/// A libtorch error that reached us as a panic from one of tch's infallible calls (or
/// from a TorchScript forward pass, which the training loop cannot continue from either).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caught(String);

impl Caught {
    /// libtorch's message on one line (its `...Error: ...` line, without the C++ backtrace).
    pub fn message(&self) -> String {
        let text = match (self.0.find("Torch(\""), self.0.rfind("\")")) {
            // tch's `unwrap()` shows the error's Debug form: quotes and newlines escaped.
            (Some(start), Some(end)) if end > start + 7 => {
                self.0[start + 7..end].replace("\\n", "\n").replace("\\\"", "\"").replace("\\'", "'")
            }
            _ => self.0.clone(),
        };
        one_line(&text)
    }

    /// Whether it is libtorch's out-of-memory error.
    pub fn is_oom(&self) -> bool {
        is_oom_message(&self.0)
    }
}

/// Whether a panic's message is a libtorch error rather than a bug of ours (which must go
/// on unwinding, with its backtrace).
fn is_libtorch_panic(msg: &str) -> bool {
    msg.contains("Torch(\"") || msg.starts_with(FORWARD_FAILED) || is_oom_message(msg)
}

thread_local! {
    /// How many [`catch_torch`] calls this thread is inside: their libtorch panics are
    /// reported as errors by the caller, so the panic hook stays quiet about them.
    static CATCHING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs `f`, turning a libtorch error raised as a panic into `Err`; any other panic (a bug)
/// goes on unwinding.
pub fn catch_torch<T>(f: impl FnOnce() -> T) -> Result<T, Caught> {
    CATCHING.with(|c| c.set(c.get() + 1));
    let result = catch_if(f, is_libtorch_panic);
    CATCHING.with(|c| c.set(c.get() - 1));
    result
}

/// A libtorch out-of-memory error that reached us as a panic (see [`catch_oom`]); shown as
/// the panic's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OutOfMemory(String);

/// Runs `f`, turning a libtorch out-of-memory panic into `Err` with its message; any other
/// panic goes on unwinding. (tch's infallible calls panic with libtorch's error.)
pub fn catch_oom<T>(f: impl FnOnce() -> T) -> Result<T, OutOfMemory> {
    catch_if(f, is_oom_message).map_err(|caught| OutOfMemory(caught.0))
}

/// Runs `f`, turning a panic whose message `wanted` accepts into `Err` with that message;
/// any other panic goes on unwinding.
fn catch_if<T>(f: impl FnOnce() -> T, wanted: fn(&str) -> bool) -> Result<T, Caught> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(value) => Ok(value),
        Err(panic) => {
            let msg = panic_message(panic.as_ref());
            if !wanted(&msg) {
                std::panic::resume_unwind(panic);
            }
            Err(Caught(msg))
        }
    }
}

/// Keeps out of stderr the panics the run recovers from or reports itself: out-of-memory
/// errors, and libtorch errors inside [`catch_torch`]. Any other panic is printed as usual.
pub fn quiet_oom_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = panic_message(info.payload());
        let caught = CATCHING.with(|c| c.get() > 0) && is_libtorch_panic(&msg);
        if !is_oom_message(&msg) && !caught {
            previous(info);
        }
    }));
}

#[cfg(feature = "fault-injection")]
fn injected(kind: &str, value: &str) -> bool {
    std::env::var("INJECT_FAULTS").map(|v| v.split(',').any(|f| f.trim() == format!("{kind}:{value}"))).unwrap_or(false)
}

/// Fails a load with the strategy named `strategy` as libtorch's out-of-memory error would,
/// when so injected; the caller names the file in its own error.
pub fn check_load(strategy: &str) -> Result<(), tch::TchError> {
    #[cfg(feature = "fault-injection")]
    if injected("oom-load", strategy) {
        return Err(tch::TchError::Torch(format!("CUDA out of memory (injected for {strategy})")));
    }
    let _ = strategy;
    Ok(())
}

/// SIGKILLs this process in the middle of a sharded save at global step `step`, when so
/// injected (the test of a rank dying mid-save).
pub fn check_sharded_save(step: u64) {
    #[cfg(feature = "fault-injection")]
    if injected("kill-in-sharded-save", &step.to_string()) {
        // SAFETY: signalling this process; SIGKILL is not caught, so nothing runs after.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    let _ = step;
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

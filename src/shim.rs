//! The Rust side of the shims' error convention (`shim/error.h`): every C++ function that can
//! fail returns an `int` status (0: success) and, on failure, sets its last argument to a
//! malloc'd message this side frees. [`call`] makes that a [`ShimError`], which each wrapper
//! ([`crate::model::script`], [`crate::distributed::engine`], [`crate::memory::cuda`])
//! turns into its own typed error.

use std::ffi::{c_char, c_int, CStr};

extern "C" {
    fn train_shim_free_error(err: *mut c_char);
}

/// A failed shim call: its status, and the C++ message (libtorch's, without the C++
/// backtrace; trimmed; empty when the shim gave none).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ShimError {
    /// The status the function returned (negative; -1 unless the function documents others).
    pub status: c_int,
    /// The message.
    pub message: String,
}

/// Calls `f` with the error slot of a shim function and turns its status into a `Result`.
pub fn call(f: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<(), ShimError> {
    let mut err: *mut c_char = std::ptr::null_mut();
    let status = f(&mut err);
    let message = take(err);
    match status {
        0 => Ok(()),
        status => Err(ShimError { status, message }),
    }
}

/// The message at `err` (empty for none), freed.
fn take(err: *mut c_char) -> String {
    if err.is_null() {
        return String::new();
    }
    // SAFETY: the shim set `err` to a NUL-terminated malloc'd string; it is freed here, once.
    let text = unsafe { CStr::from_ptr(err) }.to_string_lossy().trim().to_string();
    unsafe { train_shim_free_error(err) };
    text
}

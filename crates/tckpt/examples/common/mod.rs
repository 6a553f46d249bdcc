//! Timing shared by the examples.

use std::time::{Duration, Instant};

use anyhow::Result;

/// Runs `f` `runs` times; returns its last result and its shortest time. With 0 runs (not
/// measured), runs it once for the result and reports no time.
pub fn best<T>(runs: usize, mut f: impl FnMut() -> Result<T>) -> Result<(T, Duration)> {
    let mut fastest = Duration::MAX;
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        let out = f()?;
        fastest = fastest.min(start.elapsed());
        last = Some(out);
    }
    match last {
        Some(out) => Ok((out, fastest)),
        None => Ok((f()?, Duration::ZERO)),
    }
}

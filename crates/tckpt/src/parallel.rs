//! Runs independent jobs on a few threads, each thread with its own state (zstd contexts and
//! scratch buffers), so compression and decompression use every core they are given.

use std::sync::Mutex;

/// Applies `f` to every item on up to `states.len()` threads, the calling thread included,
/// each thread using one of `states`; returns the results in the items' order.
///
/// Threads are scoped to the call: a call is one window of chunks (several MiB), so the cost
/// of starting a thread (tens of microseconds) is small beside the work.
pub(crate) fn map_with<S, I, T, F>(states: &mut [S], items: Vec<I>, f: F) -> Vec<T>
where
    S: Send,
    I: Send,
    T: Send,
    F: Fn(&mut S, I) -> T + Sync,
{
    let workers = states.len().min(items.len());
    if workers <= 1 {
        let state = states.first_mut().expect("at least one state");
        return items.into_iter().map(|item| f(state, item)).collect();
    }
    let n = items.len();
    let queue = Mutex::new(items.into_iter().enumerate());
    let work = |state: &mut S| {
        let mut done = Vec::new();
        loop {
            // The lock is held only to take the next item, never while working.
            let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
            match next {
                Some((i, item)) => done.push((i, f(state, item))),
                None => return done,
            }
        }
    };
    let mut slots: Vec<Option<T>> = (0..n).map(|_| None).collect();
    std::thread::scope(|scope| {
        let (mine, others) = states[..workers].split_first_mut().expect("workers >= 2");
        let handles: Vec<_> = others.iter_mut().map(|state| scope.spawn(|| work(state))).collect();
        let mut all = work(mine);
        for handle in handles {
            match handle.join() {
                Ok(done) => all.extend(done),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        for (i, t) in all {
            slots[i] = Some(t);
        }
    });
    slots.into_iter().map(|t| t.expect("every item was processed")).collect()
}

/// The number of threads to use when the caller does not say: every core the OS gives us.
pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_item_order_and_uses_each_state() {
        let mut states = vec![0usize; 3];
        let out = map_with(&mut states, (0..100).collect(), |count, i: usize| {
            *count += 1;
            i * 2
        });
        assert_eq!(out, (0..100).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(states.iter().sum::<usize>(), 100);
    }

    #[test]
    fn one_state_runs_inline() {
        let mut states = vec![()];
        let out = map_with(&mut states, vec![1, 2, 3], |_, i| i + 1);
        assert_eq!(out, [2, 3, 4]);
    }
}

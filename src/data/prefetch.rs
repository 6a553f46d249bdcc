//! Batches assembled ahead of the training loop.

use tch::Device;

use super::split::{Batch, Split};

/// Assembles batches on a background thread, a couple ahead of the training loop, so the
/// loop does not wait on gathering examples and copying them to the device. Dropping it
/// stops the thread.
pub struct Prefetcher {
    rx: Option<std::sync::mpsc::Receiver<Batch>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Batches assembled ahead of the loop.
const PREFETCH_DEPTH: usize = 2;

impl Prefetcher {
    /// Yields `split`'s examples at each of `batches`, in order, on `device`.
    pub fn new(split: &Split, batches: Vec<Vec<i64>>, device: Device) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(PREFETCH_DEPTH);
        // Shallow clones share the data; the thread only reads it.
        let split = split.shallow_clone();
        let thread = std::thread::Builder::new()
            .name("batch-prefetch".into())
            .spawn(move || {
                for indices in batches {
                    if tx.send(split.batch(&indices, device)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning the batch prefetch thread");
        Self { rx: Some(rx), thread: Some(thread) }
    }
}

impl Iterator for Prefetcher {
    type Item = Batch;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Closing the channel first makes a blocked sender give up.
        self.rx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

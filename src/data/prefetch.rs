//! Batches assembled ahead of the training loop.

use tch::Device;

use super::error::DataError;
use super::examples::Pass;
use super::split::{Batch, Split};

/// Assembles batches on a background thread, `depth` ahead of the training loop, so the
/// loop does not wait on reading examples and copying them to the device. Dropping it
/// stops the thread. A batch that cannot be read ends the sequence with its error.
pub struct Prefetcher {
    rx: Option<std::sync::mpsc::Receiver<Result<Batch, DataError>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Batches assembled ahead of the loop by default (`data.prefetch_batches`).
pub const PREFETCH_DEPTH: usize = 2;

impl Prefetcher {
    /// Yields `split`'s examples at each of `batches`, in order, read in `pass`, on `device`,
    /// with `depth` batches (at least one) assembled ahead.
    pub fn new(
        split: &Split,
        batches: impl Iterator<Item = Vec<i64>> + Send + 'static,
        pass: Pass,
        device: Device,
        depth: usize,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(depth.max(1));
        // Shallow clones share the data; the thread only reads it.
        let split = split.shallow_clone();
        let thread = std::thread::Builder::new()
            .name("batch-prefetch".into())
            .spawn(move || {
                for indices in batches {
                    let batch = split.batch(&indices, pass, device);
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        break;
                    }
                }
            })
            .expect("spawning the batch prefetch thread");
        Self { rx: Some(rx), thread: Some(thread) }
    }
}

impl Iterator for Prefetcher {
    type Item = Result<Batch, DataError>;
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

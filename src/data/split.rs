//! One split of a data set, and the batches gathered from it: held in host memory (the
//! small kinds), or read example by example from its files ([`Examples`]: the streamed kinds).

use std::sync::Arc;

use tch::{Device, Tensor};

use super::error::DataError;
use super::examples::{bytes_of, Examples, Layout, Pass};

/// A batch: the model's inputs (see [`Split::batch`]) and the targets.
pub type Batch = (Vec<Tensor>, Tensor);

/// One split of a data set.
#[derive(Debug)]
pub struct Split {
    store: Store,
}

#[derive(Debug)]
enum Store {
    /// `inputs`: `[N, ...]` model inputs (float images, int64 token windows or float
    /// features; several for a TorchScript module that takes named inputs,
    /// `model.torchscript.inputs`, in that order); `targets`: `[N, ...]` int64 classes, int64
    /// next tokens, or float values.
    Memory { inputs: Vec<Tensor>, targets: Tensor },
    /// Examples `start .. start + len` of `examples`, read on demand by `workers` threads.
    Streamed { examples: Arc<dyn Examples>, start: usize, len: usize, workers: usize, bad: BadSamples },
}

/// What a streamed split does with an example that cannot be read (`data.on_bad_sample`),
/// and how many it has skipped (shared by its clones and the splits made from it).
#[derive(Debug, Clone, Default)]
pub(super) struct BadSamples {
    skip: bool,
    skipped: Arc<std::sync::atomic::AtomicU64>,
}

impl Split {
    /// A split held in host memory (see [`Store::Memory`]).
    pub(super) fn in_memory(inputs: Vec<Tensor>, targets: Tensor) -> Self {
        Self { store: Store::Memory { inputs, targets } }
    }

    /// Every example of `examples`, read on demand.
    pub(super) fn streamed(examples: Arc<dyn Examples>) -> Self {
        let len = examples.len();
        Self { store: Store::Streamed { examples, start: 0, len, workers: 1, bad: BadSamples::default() } }
    }

    /// With `skip`, an example that cannot be read is left out of its batch (logged and
    /// counted, [`Split::skipped`]) instead of stopping the run (`data.on_bad_sample: skip`).
    /// The same examples are bad whenever they are read, so a resumed run skips the same.
    pub fn skipping_bad_samples(mut self, skip: bool) -> Self {
        if let Store::Streamed { bad, .. } = &mut self.store {
            bad.skip = skip;
        }
        self
    }

    /// Examples skipped so far as unreadable (see [`Split::skipping_bad_samples`]).
    pub fn skipped(&self) -> u64 {
        match &self.store {
            Store::Memory { .. } => 0,
            Store::Streamed { bad, .. } => bad.skipped.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Reads a streamed split's examples with `workers` threads per batch (at least one); a
    /// split in memory is gathered by one.
    pub fn with_workers(mut self, n: usize) -> Self {
        if let Store::Streamed { workers, .. } = &mut self.store {
            *workers = n.max(1);
        }
        self
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        match &self.store {
            Store::Memory { targets, .. } => targets.size()[0] as usize,
            Store::Streamed { len, .. } => *len,
        }
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether examples are read from files on demand (rather than held in memory).
    pub fn is_streamed(&self) -> bool {
        matches!(self.store, Store::Streamed { .. })
    }

    /// Host bytes of one example's tensors, inputs and target (a batch of `b` takes `b` times
    /// this).
    pub fn example_bytes(&self) -> usize {
        match &self.store {
            Store::Memory { inputs, targets } => {
                inputs.iter().chain(std::iter::once(targets)).map(|t| bytes_of(&t.size()[1..], t.kind())).sum()
            }
            Store::Streamed { examples, .. } => examples.layout().example_bytes(),
        }
    }

    /// The examples at `indices`, moved to `device`.
    ///
    /// Rows are gathered with plain memory copies rather than `index_select`: run on the
    /// prefetch thread, a libtorch parallel op would start a second OpenMP team, whose
    /// spinning threads slow every training step (measured: 0.47x PyTorch's speed on the
    /// default MLP with `index_select`; see bench/README.md). A streamed split reads each
    /// example straight into its row of the batch.
    pub fn batch(&self, indices: &[i64], pass: Pass, device: Device) -> Result<Batch, DataError> {
        let (inputs, targets) = match &self.store {
            Store::Memory { inputs, targets } => {
                (inputs.iter().map(|t| gather_rows(t, indices)).collect(), gather_rows(targets, indices))
            }
            Store::Streamed { examples, start, len, workers, bad } => {
                read_batch(examples.as_ref(), *start, *len, *workers, bad, pass, indices)?
            }
        };
        Ok((inputs.into_iter().map(|t: Tensor| to_device(t, device)).collect(), to_device(targets, device)))
    }

    /// Another handle on the same examples (nothing is copied).
    pub fn shallow_clone(&self) -> Self {
        let store = match &self.store {
            Store::Memory { inputs, targets } => Store::Memory {
                inputs: inputs.iter().map(Tensor::shallow_clone).collect(),
                targets: targets.shallow_clone(),
            },
            Store::Streamed { examples, start, len, workers, bad } => Store::Streamed {
                examples: Arc::clone(examples),
                start: *start,
                len: *len,
                workers: *workers,
                bad: bad.clone(),
            },
        };
        Self { store }
    }

    /// Examples `start .. start + len`.
    pub(super) fn rows(&self, start: i64, len: i64) -> Self {
        let store = match &self.store {
            Store::Memory { inputs, targets } => Store::Memory {
                inputs: inputs.iter().map(|t| t.narrow(0, start, len)).collect(),
                targets: targets.narrow(0, start, len),
            },
            Store::Streamed { examples, start: first, workers, bad, .. } => Store::Streamed {
                examples: Arc::clone(examples),
                start: first + start as usize,
                len: len as usize,
                workers: *workers,
                bad: bad.clone(),
            },
        };
        Self { store }
    }

    pub(super) fn head(self, limit: Option<u64>) -> Self {
        match limit {
            Some(l) if (l as usize) < self.len() => self.rows(0, l as i64),
            _ => self,
        }
    }
}

/// `t` on `device`: for a GPU, through pinned host memory and an asynchronous copy, so the
/// copy overlaps the step (libtorch keeps the pinned block until the copy is done).
fn to_device(t: Tensor, device: Device) -> Tensor {
    match device {
        Device::Cuda(_) => match t.f_pin_memory(device) {
            Ok(pinned) => pinned.to_device_(device, pinned.kind(), true, false),
            Err(_) => t.to_device(device),
        },
        _ => t.to_device(device),
    }
}

/// Reads examples `start + i` for each `i` of `indices` (each below `len`) into a new batch,
/// each example straight into its rows, spread over `workers` threads. With `bad.skip`,
/// unreadable examples are left out (the rows after them move up).
fn read_batch(
    examples: &dyn Examples,
    start: usize,
    len: usize,
    workers: usize,
    bad: &BadSamples,
    pass: Pass,
    indices: &[i64],
) -> Result<(Vec<Tensor>, Tensor), DataError> {
    let Layout { inputs, target } = examples.layout();
    let b = indices.len() as i64;
    let make = |(shape, kind): &(Vec<i64>, tch::Kind)| {
        let full: Vec<i64> = std::iter::once(b).chain(shape.iter().copied()).collect();
        Tensor::empty(full.as_slice(), (*kind, Device::Cpu))
    };
    let tensors: Vec<Tensor> = inputs.iter().chain(std::iter::once(target)).map(make).collect();
    let sizes: Vec<usize> = inputs.iter().chain(std::iter::once(target)).map(|(s, k)| bytes_of(s, *k)).collect();
    // SAFETY: each tensor is a fresh contiguous host tensor of `b` rows of `sizes[k]` bytes;
    // the slices are dropped before the tensors leave this function, and nothing else refers
    // to the tensors meanwhile.
    let mut columns: Vec<std::slice::ChunksExactMut<'_, u8>> = tensors
        .iter()
        .zip(&sizes)
        .map(|(t, &size)| {
            let all = if size == 0 || b == 0 {
                &mut [][..]
            } else {
                unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, b as usize * size) }
            };
            all.chunks_exact_mut(size.max(1))
        })
        .collect();
    let mut rows: Vec<(usize, Vec<&mut [u8]>)> = Vec::with_capacity(indices.len());
    for &i in indices {
        assert!((0..len as i64).contains(&i), "example index {i} out of range 0..{len}");
        let row = columns
            .iter_mut()
            .zip(&sizes)
            .map(|(c, &size)| if size == 0 { &mut [][..] } else { c.next().expect("one row per index") })
            .collect();
        rows.push((start + i as usize, row));
    }
    let per_worker = rows.len().div_ceil(workers.max(1)).max(1);
    let skip = bad.skip;
    // With `skip`, the positions (in the batch) of the examples that could not be read.
    let failed: Vec<usize> = std::thread::scope(|scope| {
        let running: Vec<_> = rows
            .chunks_mut(per_worker)
            .enumerate()
            .map(|(c, chunk)| {
                scope.spawn(move || {
                    let mut failed = Vec::new();
                    for (k, (i, row)) in chunk.iter_mut().enumerate() {
                        match examples.read(*i, pass, row) {
                            Ok(()) => {}
                            Err(e) if skip => {
                                tracing::warn!("skipping a bad sample (data.on_bad_sample: skip): {e}");
                                failed.push(c * per_worker + k);
                            }
                            Err(e) => return Err(DataError::from(e)),
                        }
                    }
                    Ok(failed)
                })
            })
            .collect();
        running.into_iter().map(|r| r.join().expect("a decode worker panicked")).collect::<Result<Vec<_>, _>>()
    })?
    .concat();
    drop(rows);
    let kept = indices.len() - failed.len();
    if !failed.is_empty() {
        bad.skipped.fetch_add(failed.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if kept == 0 {
            return Err(DataError::Config(format!(
                "every one of the {} examples of a batch is bad (data.on_bad_sample: skip): nothing is left of it to \
                 train on; the log names each",
                indices.len()
            )));
        }
        for (t, &size) in tensors.iter().zip(&sizes) {
            if size == 0 {
                continue;
            }
            // SAFETY: as above; no other slice of this memory is alive now.
            let all = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, indices.len() * size) };
            for (to, from) in (0..indices.len()).filter(|p| !failed.contains(p)).enumerate() {
                all.copy_within(from * size..(from + 1) * size, to * size);
            }
        }
    }
    let keep = |t: &Tensor| if failed.is_empty() { t.shallow_clone() } else { t.narrow(0, 0, kept as i64) };
    let target = keep(tensors.last().expect("the target"));
    let inputs = tensors[..tensors.len() - 1].iter().map(keep).collect();
    Ok((inputs, target))
}

/// Copies rows `indices` of a contiguous host tensor `[N, ...]` into a new `[len, ...]` one.
fn gather_rows(t: &Tensor, indices: &[i64]) -> Tensor {
    let mut shape = t.size();
    let n = shape[0];
    let row_bytes = (t.numel() / n.max(1) as usize) * t.kind().elt_size_in_bytes();
    shape[0] = indices.len() as i64;
    let out = Tensor::empty(shape.as_slice(), (t.kind(), Device::Cpu));
    if row_bytes == 0 || indices.is_empty() {
        return out;
    }
    let src = t.contiguous();
    // SAFETY: `src` is a contiguous host tensor of `n` rows of `row_bytes` bytes and `out` a
    // fresh one of `indices.len()` rows; every index is checked to be below `n`; both stay
    // alive, and nothing else refers to `out`, while the slices exist.
    unsafe {
        let from = std::slice::from_raw_parts(src.data_ptr() as *const u8, n as usize * row_bytes);
        let to = std::slice::from_raw_parts_mut(out.data_ptr() as *mut u8, indices.len() * row_bytes);
        for (dst, &i) in to.chunks_exact_mut(row_bytes).zip(indices) {
            assert!((0..n).contains(&i), "example index {i} out of range 0..{n}");
            let at = i as usize * row_bytes;
            dst.copy_from_slice(&from[at..at + row_bytes]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn gathered_rows_equal_index_select() {
        let t = Tensor::arange(60, (Kind::Float, Device::Cpu)).view([10, 2, 3]);
        let idx = [7i64, 0, 7, 3];
        let ours = gather_rows(&t, &idx);
        assert!(ours.equal(&t.index_select(0, &Tensor::from_slice(&idx))));
        let labels = Tensor::arange(10, (Kind::Int64, Device::Cpu));
        assert!(gather_rows(&labels, &idx).equal(&labels.index_select(0, &Tensor::from_slice(&idx))));
    }
}

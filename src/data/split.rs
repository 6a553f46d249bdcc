//! One split of a data set on the host, and the batches gathered from it.

use tch::{Device, Tensor};

/// A batch: the model's inputs (see [`Split::inputs`]) and the targets.
pub type Batch = (Vec<Tensor>, Tensor);

/// One split of a data set, on the host.
#[derive(Debug)]
pub struct Split {
    /// `[N, ...]` model inputs: float images, int64 token windows, or float features; several
    /// for a TorchScript module that takes named inputs (`model.torchscript.inputs`), in
    /// that order.
    pub inputs: Vec<Tensor>,
    /// `[N, ...]` targets: int64 classes, int64 next tokens, or float values.
    pub targets: Tensor,
}

impl Split {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.targets.size()[0] as usize
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples at `indices`, moved to `device`.
    ///
    /// Rows are gathered with plain memory copies rather than `index_select`: run on the
    /// prefetch thread, a libtorch parallel op would start a second OpenMP team, whose
    /// spinning threads slow every training step (measured: 0.47x PyTorch's speed on the
    /// default MLP with `index_select`; see bench/README.md).
    pub fn batch(&self, indices: &[i64], device: Device) -> Batch {
        let inputs = self.inputs.iter().map(|t| gather_rows(t, indices).to_device(device)).collect();
        (inputs, gather_rows(&self.targets, indices).to_device(device))
    }

    pub(super) fn shallow_clone(&self) -> Self {
        Self { inputs: self.inputs.iter().map(Tensor::shallow_clone).collect(), targets: self.targets.shallow_clone() }
    }

    /// Examples `start .. start + len`.
    pub(super) fn rows(&self, start: i64, len: i64) -> Self {
        Self {
            inputs: self.inputs.iter().map(|t| t.narrow(0, start, len)).collect(),
            targets: self.targets.narrow(0, start, len),
        }
    }

    pub(super) fn head(self, limit: Option<u64>) -> Self {
        match limit {
            Some(l) if (l as usize) < self.len() => self.rows(0, l as i64),
            _ => self,
        }
    }
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

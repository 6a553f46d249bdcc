//! The one interface every streamed data kind implements: a map-style source of examples
//! (its length, and example `i` read on request), as PyTorch's map-style `Dataset` is. A
//! batch is assembled by reading its examples straight into the batch's own memory, spread
//! over the decode workers (`data.workers`), so host memory holds the batches in flight and
//! never the data set.

use std::path::PathBuf;

use tch::Kind;

use super::error::DataError;

/// The shape and kind of one example's tensors: each input's, then the target's.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Each input's shape (without the batch dimension) and kind.
    pub inputs: Vec<(Vec<i64>, Kind)>,
    /// The target's shape (without the batch dimension) and kind.
    pub target: (Vec<i64>, Kind),
}

impl Layout {
    /// Bytes of one example, inputs and target together.
    pub fn example_bytes(&self) -> usize {
        self.inputs.iter().chain(std::iter::once(&self.target)).map(|(shape, kind)| bytes_of(shape, *kind)).sum()
    }
}

/// Bytes of one tensor of `shape` and `kind`.
pub(super) fn bytes_of(shape: &[i64], kind: Kind) -> usize {
    shape.iter().product::<i64>().max(0) as usize * kind.elt_size_in_bytes()
}

/// Which pass over the data reads an example: augmentations draw from (`seed`, `epoch`,
/// the example's index), so that a resumed run, another rank or another worker sees the same
/// example the same way, and every epoch sees it anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pass {
    /// `training.seed`.
    pub seed: u64,
    /// The epoch being trained (1-based), or evaluated after.
    pub epoch: u32,
}

impl Pass {
    /// The augmentations' draws for example `index` in this pass.
    pub fn draws(self, index: usize) -> super::transforms::Draws {
        super::transforms::Draws::new(self.seed, self.epoch, index as u64)
    }
}

/// A data set read example by example. Implementations are shared by the decode workers,
/// which call [`Examples::read`] for different examples at once.
pub trait Examples: Send + Sync + std::fmt::Debug {
    /// Number of examples.
    fn len(&self) -> usize;

    /// The layout every example has.
    fn layout(&self) -> &Layout;

    /// Writes example `i` (below [`Examples::len`]) into `out`: one buffer per input, then
    /// the target's, each exactly its [`Layout`] size, little-endian and row-major. `pass`
    /// seeds what is random about it (augmentations); most kinds have nothing random.
    fn read(&self, i: usize, pass: Pass, out: &mut [&mut [u8]]) -> Result<(), ExampleError>;
}

/// Why example `index` could not be read.
#[derive(Debug, thiserror::Error)]
#[error("data file {path}, example {index}: {reason}")]
pub struct ExampleError {
    /// The file that holds it.
    pub path: PathBuf,
    /// Its index in the data set.
    pub index: usize,
    /// What went wrong.
    pub reason: String,
}

impl From<ExampleError> for DataError {
    fn from(e: ExampleError) -> Self {
        DataError::Unusable { path: e.path, reason: format!("example {}: {}", e.index, e.reason) }
    }
}

//! The one interface between the training step and checkpoints: the step hands over its
//! state as a [`TrainingState`] and knows no file format; the plan layer decides what of it
//! goes into which file (`plan::save`), and storage writes it.

use tch::Tensor;
use train_ckpt::{optimizer_entry, Meta, Position};

use super::tensors::tensor_bytes;

/// Where a run stands and its last losses: what a resume gives back to the step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    /// Epochs, steps and batches done.
    pub position: Position,
    /// Mean training loss of the last completed epoch.
    pub train_loss: f64,
    /// Validation loss of the last evaluation.
    pub val_loss: f64,
    /// Validation accuracy of the last evaluation.
    pub val_accuracy: f64,
}

impl Standing {
    /// What a checkpoint's metadata records.
    pub fn of(meta: &Meta) -> Self {
        Self {
            position: meta.position,
            train_loss: meta.train_loss,
            val_loss: meta.val_loss,
            val_accuracy: meta.val_accuracy,
        }
    }
}

/// Where a run stands and how it trains: the metadata a checkpoint records beside the
/// tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Where the run stands.
    pub standing: Standing,
    /// `training.batch_size`: a mid-epoch position counts batches of this size.
    pub batch_size: u32,
    /// The optimiser's configuration, as `training.optimizer` serialises.
    pub optimizer: serde_json::Value,
    /// The learning-rate schedule's state.
    pub lr_scheduler: serde_json::Value,
    /// `training.seed`.
    pub seed: u64,
    /// How the seed is used (see `training`).
    pub rng_scheme: &'static str,
}

/// What the training step hands to a save.
pub struct TrainingState {
    /// The model's parameters and buffers by PyTorch name, sorted by name.
    pub model: Vec<(String, Tensor)>,
    /// The optimiser's state by slot key (`<param>/<slot>`).
    pub optimizer: Vec<(String, Tensor)>,
    /// Where the run stands.
    pub progress: Progress,
    /// With sharded state: the pieces of parameters this rank holds. Their model tensors
    /// and optimiser slots (but `step`) are then 1-D pieces of the whole tensor; `model` holds
    /// only this rank's pieces (and, on rank 0, every variable that is not sharded).
    pub shard: Option<Shard>,
}

/// One rank's share of sharded state, as a save sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// This rank.
    pub rank: u32,
    /// The ranks.
    pub world: u32,
    /// The pieces it holds.
    pub pieces: Vec<ShardPiece>,
}

/// One piece of a parameter a rank holds: elements `offset .. offset + len` of the
/// flattened parameter of `shape`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPiece {
    /// The parameter's name.
    pub name: String,
    /// Its whole shape.
    pub shape: Vec<usize>,
    /// First element of the piece.
    pub offset: u64,
    /// Elements in it.
    pub len: u64,
}

/// Tensor names with their sizes in bytes.
pub type NamedSizes<'a> = Vec<(&'a str, u64)>;

impl TrainingState {
    /// The model's tensors by name, then the optimiser's by slot key, each with its size:
    /// what the save plan sees, in the order of [`Self::into_tensors`].
    pub fn sizes(&self) -> (NamedSizes<'_>, NamedSizes<'_>) {
        fn sized(v: &[(String, Tensor)]) -> NamedSizes<'_> {
            v.iter().map(|(n, t)| (n.as_str(), tensor_bytes(t))).collect()
        }
        (sized(&self.model), sized(&self.optimizer))
    }

    /// Every tensor under the name a file stores it under (optimiser slots under
    /// `optimizer/`), model first.
    pub fn into_tensors(self) -> Vec<(String, Tensor)> {
        let optimizer = self.optimizer.into_iter().map(|(k, t)| (optimizer_entry(&k), t));
        self.model.into_iter().chain(optimizer).collect()
    }
}

//! Sharded optimizer state and gradients (ZeRO stages 1 and 2) over the process group:
//! [`Zero`] holds this rank's pieces of the trainable parameters ([`super::partition`]),
//! gives the optimiser those pieces to step, and moves the bytes between the ranks through
//! c10d's collectives.
//!
//! A step, after backward:
//! - ZeRO-1 (`shard: optimizer`): the gradients are all-reduced whole, as without sharding
//!   (DDP's Reducer, overlapping backward, when `distributed.overlap`); each rank steps only
//!   its pieces, with the optimiser state of those pieces alone; the updated pieces are
//!   all-gathered into every rank's parameters.
//! - ZeRO-2 (`shard: optimizer_and_gradients`): the gradients are reduce-scattered bucket
//!   by bucket into this rank's shard buffers and the whole gradients released, so after the
//!   step a rank holds only its shard's gradients; clipping sums the squared norm of every
//!   shard over the ranks; then the step and the all-gather as in ZeRO-1.

use tch::{Kind, Tensor};

use super::error::DistError;
use super::job::{Dist, BUCKET_BYTES};
use super::partition::{Partition, Piece};
use crate::checkpoint::state::ShardPiece;
use crate::optim::{GradOf, Param};

/// Which state is sharded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// ZeRO-1: optimizer state.
    Optimizer,
    /// ZeRO-2: optimizer state and gradients.
    OptimizerAndGradients,
}

impl Stage {
    /// Its `distributed.shard` name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Optimizer => "optimizer",
            Self::OptimizerAndGradients => "optimizer_and_gradients",
        }
    }
}

/// This rank's share of sharded state.
pub struct Zero {
    stage: Stage,
    partition: Partition,
    rank: i64,
    /// The trainable parameters, by name, in the optimiser's (and the partition's) order.
    params: Vec<(String, Tensor)>,
    pieces: Vec<Piece>,
    /// ZeRO-2: this rank's shard of each bucket's gradients.
    grad_shards: Vec<Tensor>,
}

impl Zero {
    /// Shards `params` (the trainable parameters by name, on every rank the same) over
    /// `world` ranks for rank `rank`. Refuses a non-contiguous parameter, whose pieces
    /// could not be views of it.
    pub fn new(stage: Stage, mut params: Vec<(String, Tensor)>, rank: u32, world: u32) -> Result<Self, DistError> {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some((name, _)) = params.iter().find(|(_, t)| !t.is_contiguous()) {
            return Err(DistError::Backend(format!(
                "parameter `{name}` is not contiguous in memory, so it cannot be sharded (distributed.shard: {}); \
                 use distributed.shard: none",
                stage.name()
            )));
        }
        let shapes: Vec<(i64, Kind)> = params.iter().map(|(_, t)| (t.numel() as i64, t.kind())).collect();
        let partition = Partition::new(&shapes, BUCKET_BYTES, i64::from(world));
        let sizes: Vec<i64> = shapes.iter().map(|s| s.0).collect();
        let pieces = partition.pieces(i64::from(rank), &sizes);
        let grad_shards = match stage {
            Stage::Optimizer => Vec::new(),
            Stage::OptimizerAndGradients => partition
                .buckets
                .iter()
                .map(|b| {
                    let first = &params[b.params.start].1;
                    Tensor::zeros([b.shard], (first.kind(), first.device()))
                })
                .collect(),
        };
        Ok(Self { stage, partition, rank: i64::from(rank), params, pieces, grad_shards })
    }

    /// Which state is sharded.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The parameters the optimiser steps on this rank: this rank's pieces, 1-D views of
    /// the parameters, under the parameters' names, their gradients read as the stage says.
    pub fn optimizer_params(&self) -> Vec<Param> {
        let _guard = tch::no_grad_guard();
        self.pieces
            .iter()
            .map(|p| {
                let (name, whole) = &self.params[p.param];
                let tensor = whole.detach().view(-1).narrow(0, p.offset, p.len);
                let grad = match self.stage {
                    Stage::Optimizer => GradOf::Slice { of: whole.shallow_clone(), offset: p.offset, len: p.len },
                    Stage::OptimizerAndGradients => GradOf::Held(self.grad_shards[p.bucket].narrow(0, p.at, p.len)),
                };
                Param { name: name.clone(), tensor, grad }
            })
            .collect()
    }

    /// The pieces this rank owns, for a checkpoint and for reading state back.
    pub fn owned(&self) -> Vec<ShardPiece> {
        self.pieces
            .iter()
            .map(|p| {
                let (name, whole) = &self.params[p.param];
                ShardPiece {
                    name: name.clone(),
                    shape: whole.size().iter().map(|&d| d as usize).collect(),
                    offset: p.offset as u64,
                    len: p.len as u64,
                }
            })
            .collect()
    }

    /// This rank's pieces of the parameters' current values (1-D views), by name.
    pub fn parameter_pieces(&self) -> Vec<(String, Tensor)> {
        self.optimizer_params().into_iter().map(|p| (p.name, p.tensor)).collect()
    }

    fn tensors(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, t)| t.shallow_clone()).collect()
    }

    /// ZeRO-2, after the step's backward: the gradients, each rank's scaled by `scale`
    /// (its share of the global batch), summed into this rank's shards; the whole
    /// gradients released. A no-op under ZeRO-1.
    pub fn reduce_scatter(&self, dist: &Dist, scale: f64) -> Result<(), DistError> {
        if self.stage != Stage::OptimizerAndGradients {
            return Ok(());
        }
        dist.reduce_scatter_grads(&self.tensors(), &self.partition.ends(), &self.grad_shards, scale)
    }

    /// ZeRO-2's gradient clipping: the global L2 norm of the gradients is that of every
    /// rank's shards together (one all-reduce of a squared norm); when above `max_norm`,
    /// each shard is scaled as `torch.nn.utils.clip_grad_norm_` scales gradients. Returns
    /// the norm.
    pub fn clip_grad_norm(&self, dist: &Dist, max_norm: f64) -> Result<f64, DistError> {
        let _guard = tch::no_grad_guard();
        let local: f64 = self
            .grad_shards
            .iter()
            .map(|g| {
                let n = g.norm().to_kind(Kind::Double).double_value(&[]);
                n * n
            })
            .sum();
        let total = dist.sum(&[local])?[0].sqrt();
        let coef = max_norm / (total + 1e-6);
        if coef < 1.0 {
            for g in &self.grad_shards {
                let _ = g.shallow_clone().g_mul_scalar_(coef);
            }
        }
        Ok(total)
    }

    /// After the step: every rank's updated pieces gathered into every rank's parameters.
    pub fn allgather(&self, dist: &Dist) -> Result<(), DistError> {
        dist.allgather_params(&self.tensors(), &self.partition.ends())
    }

    /// Bytes of gradients this rank holds between steps: its shard buffers (ZeRO-2), or
    /// every parameter's whole gradient.
    pub fn gradient_bytes(&self) -> u64 {
        let held: Vec<Tensor> = match self.stage {
            Stage::OptimizerAndGradients => self.grad_shards.iter().map(Tensor::shallow_clone).collect(),
            Stage::Optimizer => self.params.iter().map(|(_, t)| t.grad()).filter(Tensor::defined).collect(),
        };
        held.iter().map(|t| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64).sum()
    }

    /// This rank.
    pub fn rank(&self) -> i64 {
        self.rank
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::config::{OptimizerConfig, OptimizerKind};
    use crate::optim::{self, Param};

    /// Parameters of many shapes (an odd count of elements, a scalar, one larger than a
    /// bucket would hold in a small cap), each with a seeded gradient.
    fn params(seed: i64) -> Vec<(String, Tensor)> {
        tch::manual_seed(seed);
        [vec![7, 3], vec![1], vec![5], vec![4, 4, 2], vec![13]]
            .into_iter()
            .enumerate()
            .map(|(i, shape)| (format!("p{i}"), Tensor::randn(shape, tch::kind::FLOAT_CPU).set_requires_grad(true)))
            .collect()
    }

    /// Sets every parameter's gradient to a fresh seeded draw (the same for every copy).
    fn gradients(params: &[(String, Tensor)], step: i64) {
        let loss = params
            .iter()
            .enumerate()
            .map(|(i, (_, p))| {
                tch::manual_seed(100 * step + i as i64);
                (p * Tensor::randn(p.size(), tch::kind::FLOAT_CPU)).sum(Kind::Float)
            })
            .reduce(|a, b| a + b)
            .unwrap();
        loss.backward();
    }

    fn copy_of(params: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
        params.iter().map(|(n, p)| (n.clone(), p.detach().copy().set_requires_grad(true))).collect()
    }

    /// Stepping each rank's pieces with their own state (ZeRO-1's way of reading the whole
    /// gradient) gives, piece for piece, the bits of stepping whole parameters: for Adam,
    /// AdamW and SGD with Nesterov momentum, every world from 1 to 4, over three steps (the
    /// step counts and moments of each piece carried along).
    #[test]
    fn stepping_pieces_is_stepping_whole_parameters_bit_for_bit() {
        let kinds = [
            OptimizerConfig { kind: OptimizerKind::Adam, weight_decay: 0.1, ..OptimizerConfig::default() },
            OptimizerConfig { kind: OptimizerKind::Adamw, ..OptimizerConfig::default() },
            OptimizerConfig { kind: OptimizerKind::Sgd, nesterov: true, momentum: 0.9, ..OptimizerConfig::default() },
        ];
        for cfg in kinds {
            for world in 1..=4u32 {
                let whole = params(7);
                let mut reference =
                    optim::build(&cfg, whole.iter().map(|(n, t)| Param::whole(n.clone(), t.shallow_clone())).collect());
                let ranks: Vec<(Vec<(String, Tensor)>, Zero)> = (0..world)
                    .map(|r| {
                        let mine = copy_of(&whole);
                        let shared = mine.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
                        let zero = Zero::new(Stage::Optimizer, shared, r, world).unwrap();
                        (mine, zero)
                    })
                    .collect();
                let mut stepped: Vec<_> = ranks.iter().map(|(_, z)| optim::build(&cfg, z.optimizer_params())).collect();
                for step in 0..3 {
                    reference.zero_grad();
                    gradients(&whole, step);
                    reference.step();
                    for ((mine, _), opt) in ranks.iter().zip(&mut stepped) {
                        for (_, p) in mine {
                            let mut g = p.grad();
                            if g.defined() {
                                let _ = g.zero_();
                            }
                        }
                        gradients(mine, step);
                        opt.step();
                    }
                }
                // Each rank's pieces hold what the whole optimizer computed for them.
                for (mine, zero) in &ranks {
                    for piece in zero.owned() {
                        let at = |set: &[(String, Tensor)]| {
                            let (_, t) = set.iter().find(|(n, _)| *n == piece.name).unwrap();
                            Vec::<f32>::try_from(t.detach().view(-1).narrow(0, piece.offset as i64, piece.len as i64))
                                .unwrap()
                        };
                        let (got, want) = (at(mine), at(&whole));
                        assert!(
                            got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{:?} world {world}, {}: {got:?} vs {want:?}",
                            cfg.kind,
                            piece.name
                        );
                    }
                }
            }
        }
    }
}

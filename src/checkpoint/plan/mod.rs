//! The checkpoint plan layer: pure functions that decide, from figures and names only,
//! - what a save writes ([`save`]): which tensors go in each file, by role, what the file's
//!   metadata says (`has_optimizer_state` among it), which rank writes, how much space it
//!   needs;
//! - how a checkpoint is loaded ([`load`], and `train_ckpt::strategy`, the strategy rule
//!   itself, kept in the libtorch-free crate so that the Python package uses the same one):
//!   the strategy from free memory and the file's sizes, the step-down order after an out-of-memory error, which tensors are
//!   read in place and which staged, and whether the optimizer's state is restored;
//! - which per-epoch files retention deletes ([`retention`]).
//!
//! Storage (`checkpoint::saver`, `checkpoint::load`, `checkpoint::store` and the
//! `train-ckpt` crate) carries these plans out and decides nothing.

pub mod load;
pub mod reads;
pub mod retention;
pub mod save;

//! Data: a data set held in memory (IDX images, a text file as byte windows, or a
//! safetensors file of `x`/`y`), its seeded batch order, and batches assembled ahead.
//!
//! The order of an epoch is a pure function of (seed, epoch), so a resumed run visits the
//! examples in exactly the order an uninterrupted one would, with no sampler state to save.

pub mod config;
mod dataset;
mod error;
mod examples;
mod files;
pub mod idx;
mod image_folder;
mod images;
mod load;
mod npy;
mod order;
mod prefetch;
mod source;
mod split;
mod tensors;
mod tokens;
pub mod transforms;
mod webdataset;

pub use dataset::{Dataset, Task, BYTE_VOCAB, MAX_CLASSES};
pub use error::{ArrayError, DataError};
pub use examples::Pass;
pub use files::check_files;
pub use order::{shard, EpochOrder};
pub use prefetch::{Prefetcher, PREFETCH_DEPTH};
pub use source::source_of;
pub use split::{Batch, Split};

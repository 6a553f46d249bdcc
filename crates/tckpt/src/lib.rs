//! A compressed checkpoint format: lossless, tensor by tensor, streamable, checksummed.
//!
//! Floats are split into byte planes (the exponent plane compresses well, the mantissa planes
//! barely and are stored as they are) and each plane of each chunk is zstd-coded, in parallel.
//! The index sits at the end of the file, so a [`Writer`] streams tensors as they come and a
//! [`Reader`] seeks to the index and then reads tensors on request: one at a time, or many at
//! once with [`Reader::read_tensors_into`], whose chunks are decoded in parallel across tensors
//! straight into the caller's buffers ([`Reader::from_file`] decodes from mapped windows of the
//! file, so reading overlaps decoding). Every chunk carries an xxh3-64 of its raw bytes
//! (format versions 2 and 3; version-1 files, one checksum per tensor, are still read),
//! checked on read. Version 3 adds a codec that codes a float's exponent plane less a
//! prediction per row and per column (for optimizer moments, which are close to rank one).
//!
//! The crate knows nothing of models or frameworks: tensors are a name, a [`Dtype`], a shape
//! and little-endian bytes, as in safetensors. The byte layout is specified in
//! `docs/compressed-format.md`; [`MAGIC`] and [`is_ckpt`] tell a file of this format from
//! others.
//!
//! ```
//! # fn main() -> Result<(), tckpt::Error> {
//! use std::collections::BTreeMap;
//! use tckpt::{Dtype, Reader, Writer};
//!
//! let weights: Vec<u8> = (0..1000u32).flat_map(|i| (i as f32 * 1e-3).to_le_bytes()).collect();
//! let mut writer = Writer::new(Vec::new())?;
//! writer.add_tensor("fc.weight", Dtype::F32, &[10, 100], &weights)?;
//! let file = writer.finish(BTreeMap::from([("epoch".into(), "3".into())]))?;
//!
//! let mut reader = Reader::new(std::io::Cursor::new(file))?;
//! assert_eq!(reader.metadata()["epoch"], "3");
//! assert_eq!(reader.tensors()[0].shape, [10, 100]);
//! assert_eq!(reader.read_tensor("fc.weight")?, weights);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod codec;
mod dtype;
mod error;
mod layout;
mod parallel;
mod reader;
mod shuffle;
mod window;
mod writer;

pub use dtype::Dtype;
pub use error::{Error, Result};
pub use layout::{
    is_ckpt, TensorInfo, FORMAT_VERSION, MAGIC, MAX_CHUNK_BYTES, MAX_EXPANSION, MAX_INDEX_LEN, MAX_RANK, MAX_TENSORS,
    MIN_FORMAT_VERSION, TRAILER_MAGIC,
};
pub use reader::Reader;
pub use writer::{Writer, WriterOptions};

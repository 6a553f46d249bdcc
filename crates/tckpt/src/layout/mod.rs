//! The byte layout of a `.tckpt` file: its constants, header and trailer ([`header`]), its
//! index ([`index`]), and the validation that turns an index read from disk into trusted
//! tensor layouts ([`validate`]). Pure: no I/O here.
//!
//! ```text
//! 0                 8           12        16                                 I            I+N       I+N+32
//! +-----------------+-----------+---------+-- tensor records ---------------+------------+--------------+
//! | MAGIC (8 bytes) | version   | flags   | chunk 0: plane 0 | plane 1 | .. | index:     | trailer      |
//! | 89 'TRNCK' \r\n | u32 LE =2 | u32 = 0 | chunk 1: ...     (tensor 0)    | JSON,      | (32 bytes,   |
//! |                 |           |         | chunk 0: ...     (tensor 1) .. | N bytes    | see Trailer) |
//! +-----------------+-----------+---------+----------------------------------+------------+--------------+
//! ```
//!
//! `docs/compressed-format.md` is the specification; this module implements it.

mod header;
mod index;
mod validate;

pub(crate) use header::{check_header, header, Trailer, HEADER_LEN, TRAILER_LEN};
pub use header::{
    is_ckpt, FORMAT_VERSION, MAGIC, MAX_CHUNK_BYTES, MAX_EXPANSION, MAX_INDEX_LEN, MAX_RANK, MAX_TENSORS,
    MIN_FORMAT_VERSION, TRAILER_MAGIC,
};
pub use index::TensorInfo;
pub(crate) use index::{hex64, rank_one_len, Checksum, Codec, Encoding, Entry, Index, Layout, PlaneEntry};
pub(crate) use validate::validate;

//! Chunk encoding: splitting elements into byte planes, choosing how each plane is stored, and
//! the inverse. The choice of codec is the writer's policy; a reader only follows the index.
//!
//! Why planes: in a float the sign and exponent bits take few values (trained weights use a
//! handful of exponents), while the low mantissa bits are close to uniform noise. Coding the
//! whole buffer mixes the two and zstd gains little; coding byte `k` of every element as its
//! own stream lets the exponent plane shrink three- or fourfold and the noise planes be stored
//! as they are, which is also what makes the codec faster than zstd on the whole buffer
//! (ZipNN, Blosc's shuffle filter).
//!
//! The files: [`planes`] (elements to byte planes and back), [`estimate`] (how well a plane
//! will code, and the filter that picks), [`filter`] (differences and the rank-one
//! prediction), [`literals`] (zstd's literals-only coder), [`encode`] and [`decode`] (a
//! chunk's planes, each stored and read as the index says).

mod decode;
mod encode;
mod estimate;
mod filter;
mod literals;
mod planes;

pub(crate) use decode::ChunkDecoder;
pub(crate) use encode::ChunkEncoder;

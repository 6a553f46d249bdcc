//! Memory: what the machine has free (GPU through NVML, host through /proc), what
//! libtorch's CUDA allocator holds, and choosing how to load a checkpoint so it fits.

pub mod cuda;
pub mod plan;
pub mod probe;
pub mod strategy;

//! Memory: what the machine has free (GPU through NVML, host and this process through
//! `/proc`, the memory cgroup through `/sys`) and what libtorch's CUDA allocator holds.
//! Deciding how a checkpoint is loaded from these figures is the checkpoint plan layer's
//! (`checkpoint::plan`).

pub mod cuda;
pub mod probe;

//! The one reader of checkpoint files, whatever wrote them: resume, `train plan` and every
//! `train ckpt` tool open files through [`CheckpointFile`], so they agree on what a file
//! holds and whether it is sound.
//!
//! | kind | told by | tensors | checked on read |
//! |---|---|---|---|
//! | ours, `*.safetensors` | a safetensors header, and `format` = `train.checkpoint` in the metadata | positioned reads, one at a time | each tensor's xxh3 and the metadata's own (version 2 on) |
//! | ours, `*.tckpt` | the compressed format's magic | decoded one at a time | the format's per-tensor and index checksums |
//! | foreign safetensors (Hugging Face, `safetensors.torch.save_file`) | a safetensors header, no `train.checkpoint` metadata | positioned reads | nothing: there are no checksums |
//! | `*.pt`, `*.pth`, `*.bin` (`torch.save`) | zip magic, or a pickle's PROTO 2 to 5 | read from the archive | nothing |
//!
//! A file's kind is told by its content ([`FileKind::sniff`]), each kind by a structure the
//! others do not share. Only a safetensors file whose header length is 0x280, 0x380, 0x480 or
//! 0x580 (mod 65536) also starts like a pickle (PROTO 2 to 5); it reads as whichever parses
//! (safetensors is tried first). The name
//! decides only when the content matches no kind (that kind's reader then says what is
//! wrong); where name and content disagree, the content wins and a warning says so.
//!
//! A `torch.save` file's weights are its model state dict; what it holds beside them (an
//! optimizer's state dict, a 0-d `loss`) is in [`CheckpointFile::other_entries`], and
//! [`CheckpointFile::pytorch_optimizer`] reads the optimizer state dict's structure.
//!
//! Opening reads the header (or the compressed format's index, or the pickle) once, checks
//! its sizes against the file's length before allocating, and refuses anything that is not a
//! regular file (a FIFO would block a reader forever). Tensor data is read only when asked for.
//!
//! The files, bottom up: [`entry`](Entry) and [`kind`](FileKind) (what a tensor and a
//! file are), `pickle` (what a `torch.save` file's pickle holds), `body` (reading tensor
//! bytes), `open` (parsing each kind), `optimizer` and `summary` (a PyTorch optimizer state
//! dict and what `ckpt inspect` says of optimizer state), `verify` (what verifying found),
//! `file` ([`CheckpointFile`], which uses them all).

mod body;
mod entry;
mod file;
mod kind;
mod open;
mod optimizer;
mod pickle;
mod summary;
mod verify;

pub use entry::Entry;
pub use file::CheckpointFile;
pub use kind::{FileKind, SNIFF_BYTES};
pub use optimizer::{Assigned, ParamGroup, ParamState, PytorchOptimizer};
pub use summary::OptimizerSummary;
pub use verify::{Integrity, Verification};

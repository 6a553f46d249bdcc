//! Writing checkpoints from libtorch tensors. What a checkpoint holds (metadata, names,
//! byte layout) is `train-store`'s (`crates/train-store`, spec in
//! `docs/checkpoint-format.md`), re-exported here; this module adds the step from a
//! [`Tensor`] to the bytes it writes.

use std::borrow::Cow;
use std::fs::File;
use std::path::Path;
use train_store::Error as FileError;

use safetensors::tensor::{Dtype, View};
use tch::{Device, Tensor};

pub use train_store::{meta::*, names::*, write::*};

use super::CheckpointError;

/// A tensor on the host, contiguous, viewed as safetensors bytes without a copy.
pub(crate) struct HostTensor {
    tensor: Tensor,
    dtype: Dtype,
    shape: Vec<usize>,
    len: usize,
}

impl HostTensor {
    /// Copies `t` to the host if it is elsewhere; makes it contiguous.
    pub(crate) fn new(name: &str, t: &Tensor) -> Result<Self, String> {
        let tensor = t.to_device(Device::Cpu).contiguous();
        let dtype = crate::dtype::from_kind(tensor.kind())
            .ok_or_else(|| format!("tensor `{name}` has unsupported dtype {:?}", t.kind()))?;
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        let len = tensor_bytes(&tensor) as usize;
        Ok(Self { tensor, dtype, shape, len })
    }
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        if self.len == 0 {
            return Cow::Borrowed(&[]);
        }
        // SAFETY: the tensor is a contiguous host tensor of `len` bytes, owned by `self`
        // for as long as the borrow lives, and nothing writes to it meanwhile.
        Cow::Borrowed(unsafe { std::slice::from_raw_parts(self.tensor.data_ptr() as *const u8, self.len) })
    }
    fn data_len(&self) -> usize {
        self.len
    }
}

/// Serializes a checkpoint of `tensors` (copied to the host first when elsewhere) with
/// `meta` and the per-tensor checksums. `path` only names the file in errors.
pub(crate) fn serialize(path: &Path, tensors: &[(String, Tensor)], meta: &Meta) -> Result<Vec<u8>, CheckpointError> {
    let host = on_host(tensors).map_err(|reason| FileError::Malformed { path: path.to_path_buf(), reason })?;
    let views: Vec<(&str, &HostTensor)> = host.iter().map(|(n, h)| (n.as_str(), h)).collect();
    Ok(serialize_views(path, &views, meta)?)
}

/// Every tensor as a [`HostTensor`], under its name.
fn on_host(tensors: &[(String, Tensor)]) -> Result<Vec<(String, HostTensor)>, String> {
    tensors.iter().map(|(n, t)| HostTensor::new(n, t).map(|h| (n.clone(), h))).collect()
}

/// Writes `tensors` and `meta` to `out` in the compressed format (copied to the host first
/// when elsewhere); returns the file's size.
pub(crate) fn write_compressed(out: &mut File, tensors: &[(String, Tensor)], meta: &Meta) -> Result<u64, String> {
    let host = on_host(tensors)?;
    let views: Vec<(&str, &HostTensor)> = host.iter().map(|(n, h)| (n.as_str(), h)).collect();
    write_compressed_views(out, &views, meta).map_err(|e| e.to_string())
}

/// Bytes a tensor's elements take (what a checkpoint stores for it).
pub fn tensor_bytes(t: &Tensor) -> u64 {
    (t.numel() * t.kind().elt_size_in_bytes()) as u64
}

//! libtorch tensors as checkpoint bytes, both ways: viewing a [`Tensor`] as the bytes a
//! file stores, and reading a file's tensors into new host tensors. What a checkpoint holds
//! (metadata, names, byte layout) is `train-ckpt`'s (`crates/train-ckpt`, spec in
//! `docs/checkpoint-format.md`).

use std::borrow::Cow;
use std::fs::File;
use std::path::Path;
use train_ckpt::Error as FileError;

use safetensors::tensor::{Dtype, View};
use tch::{Device, Kind, Tensor};
use train_ckpt::write::write_compressed_views;
use train_ckpt::{CheckpointFile, EncodeError, Entry, Meta};

use super::error::CheckpointError;
use crate::dtype::to_kind;

/// A tensor whose element type no checkpoint stores.
#[derive(Debug, thiserror::Error)]
#[error("tensor `{tensor}` has unsupported dtype {kind:?}")]
pub struct UnsupportedKind {
    /// The tensor.
    pub tensor: String,
    /// Its libtorch kind.
    pub kind: Kind,
}

/// A tensor on the host, contiguous, viewed as safetensors bytes without a copy.
pub(crate) struct HostTensor {
    tensor: Tensor,
    dtype: Dtype,
    shape: Vec<usize>,
    len: usize,
}

impl HostTensor {
    /// Copies `t` to the host if it is elsewhere; makes it contiguous.
    pub(crate) fn new(name: &str, t: &Tensor) -> Result<Self, UnsupportedKind> {
        let tensor = t.to_device(Device::Cpu).contiguous();
        let dtype = crate::dtype::from_kind(tensor.kind())
            .ok_or_else(|| UnsupportedKind { tensor: name.to_string(), kind: t.kind() })?;
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

/// Every tensor as a [`HostTensor`], under its name; one no file can hold is refused,
/// naming `path`.
pub(crate) fn on_host(path: &Path, tensors: &[(String, Tensor)]) -> Result<Vec<(String, HostTensor)>, FileError> {
    tensors
        .iter()
        .map(|(n, t)| HostTensor::new(n, t).map(|h| (n.clone(), h)))
        .collect::<Result<_, _>>()
        .map_err(|e| FileError::Malformed { path: path.to_path_buf(), reason: e.to_string() })
}

/// Writes host tensors and `meta` to `out` in the compressed format; returns the file's size.
pub(crate) fn write_compressed(out: &mut File, host: &[(String, HostTensor)], meta: &Meta) -> Result<u64, EncodeError> {
    let views: Vec<(&str, &HostTensor)> = host.iter().map(|(n, h)| (n.as_str(), h)).collect();
    write_compressed_views(out, &views, meta)
}

/// Bytes a tensor's elements take (what a checkpoint stores for it).
pub fn tensor_bytes(t: &Tensor) -> u64 {
    (t.numel() * t.kind().elt_size_in_bytes()) as u64
}

/// Reads one tensor from the file straight into a new host tensor of its shape (one copy,
/// no intermediate buffer), checked against its checksum.
pub(crate) fn read_tensor(file: &CheckpointFile, e: &Entry) -> Result<Tensor, CheckpointError> {
    Ok(read_tensors(file, &[e])?.pop().expect("one tensor per entry"))
}

/// Reads tensors into new host tensors of their shapes, in one
/// [`CheckpointFile::read_many_into`] (parallel across tensors for a compressed file), each
/// checked against its checksum.
pub(crate) fn read_tensors(file: &CheckpointFile, entries: &[&Entry]) -> Result<Vec<Tensor>, CheckpointError> {
    let mut tensors = empty_tensors(file, entries)?;
    file.read_many_into(&mut host_targets(entries, &mut tensors))?;
    Ok(tensors)
}

/// New, uninitialised host tensors of the entries' shapes and dtypes.
pub(crate) fn empty_tensors(file: &CheckpointFile, entries: &[&Entry]) -> Result<Vec<Tensor>, CheckpointError> {
    entries
        .iter()
        .map(|e| {
            let kind: Kind = to_kind(e.dtype).ok_or_else(|| FileError::Malformed {
                path: file.path().to_path_buf(),
                reason: format!("tensor `{}` has unsupported dtype {:?}", e.name, e.dtype),
            })?;
            let shape: Vec<i64> = e.shape.iter().map(|&d| d as i64).collect();
            Ok(Tensor::empty(shape.as_slice(), (kind, Device::Cpu)))
        })
        .collect()
}

/// The bytes of `tensors` (made by [`empty_tensors`] from `entries`) as read targets, leaving
/// out empty ones.
pub(crate) fn host_targets<'a>(entries: &'a [&Entry], tensors: &'a mut [Tensor]) -> Vec<(&'a str, &'a mut [u8])> {
    entries
        .iter()
        .zip(tensors)
        .filter(|(e, _)| e.bytes > 0)
        .map(|(e, t)| {
            // SAFETY: `t` is a fresh contiguous host tensor of exactly `e.bytes` bytes (its
            // shape and dtype are the entry's, whose size the header check tied to `e.bytes`);
            // each is a separate allocation, and nothing else reads or writes it while the
            // slice is alive (the tensors are not used until the read is done).
            let bytes = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, e.bytes as usize) };
            (e.name.as_str(), bytes)
        })
        .collect()
}

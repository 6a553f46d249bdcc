//! Writing a checkpoint's tensors, given as byte views ([`View`]), with its [`Meta`]: plain
//! (safetensors, with per-tensor checksums) or compressed (`crates/tckpt`, specified in
//! `docs/compressed-format.md`).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use safetensors::tensor::{Dtype, View};

use crate::atomic;
use crate::error::{EncodeError, Error};
use crate::meta::{checksum_hex, seal, Meta, CHECKSUMS_KEY};

/// Serializes any tensors that safetensors can view, with `meta` and per-tensor checksums.
pub fn serialize_views<V: View + Copy>(path: &Path, views: &[(&str, V)], meta: &Meta) -> Result<Vec<u8>, Error> {
    serialize_views_with(path, views, meta.to_map())
}

/// [`serialize_views`] with the metadata given as its map ([`Meta::to_map`], plus keys of
/// the caller's own, which [`Meta`] ignores on reading); checksums are added and sealed here.
pub fn serialize_views_with<V: View + Copy>(
    path: &Path,
    views: &[(&str, V)],
    mut metadata: HashMap<String, String>,
) -> Result<Vec<u8>, Error> {
    let checksums: serde_json::Map<String, serde_json::Value> =
        views.iter().map(|(n, v)| (n.to_string(), checksum_hex(&v.data()).into())).collect();
    metadata.insert(CHECKSUMS_KEY.into(), serde_json::Value::Object(checksums).to_string());
    safetensors::serialize(views.iter().map(|(n, v)| (*n, *v)), Some(seal(metadata)))
        .map_err(|e| Error::Malformed { path: path.to_path_buf(), reason: e.to_string() })
}

/// A tensor held as raw little-endian bytes.
#[derive(Debug, Clone)]
pub struct RawTensor {
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major bytes, `shape.product() * dtype.size()` of them.
    pub data: Vec<u8>,
}

impl View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes serialized (safetensors) checkpoint bytes to `out`; returns the file's size.
pub fn emit(out: &mut File, bytes: &[u8]) -> std::io::Result<u64> {
    let mut writer = BufWriter::new(&mut *out);
    writer.write_all(bytes)?;
    writer.flush()?;
    drop(writer);
    out.metadata().map(|m| m.len())
}

/// Writes any tensors that safetensors can view to `out` in the compressed format, one at a
/// time; returns the file's size.
pub fn write_compressed_views<V: View + Copy>(
    out: &mut File,
    views: &[(&str, V)],
    meta: &Meta,
) -> Result<u64, EncodeError> {
    write_compressed_views_with(out, views, meta.to_map())
}

/// [`write_compressed_views`] with the metadata given as its map (see
/// [`serialize_views_with`]); sealed here.
pub fn write_compressed_views_with<V: View + Copy>(
    out: &mut File,
    views: &[(&str, V)],
    metadata: HashMap<String, String>,
) -> Result<u64, EncodeError> {
    let mut writer = tckpt::Writer::new(BufWriter::new(&mut *out))?;
    for (name, v) in views {
        let dtype = crate::dtype::to_compressed(v.dtype())
            .ok_or_else(|| EncodeError::NoCompressedDtype { tensor: name.to_string(), dtype: v.dtype() })?;
        writer.add_tensor(name, dtype, v.shape(), &v.data())?;
    }
    let metadata = seal(metadata).into_iter().collect();
    writer.finish(metadata)?.flush()?;
    Ok(out.metadata()?.len())
}

/// Writes a checkpoint file atomically (see [`atomic`]) from views that read their bytes
/// only when asked (each [`View::data`] call may read a tensor from a file and give it
/// back), one tensor at a time: no more than one tensor's bytes are held at once. A plain
/// file asks each view twice (its checksum first, since the header holds them, then its
/// bytes); a compressed one once. `failure` is where the views leave a read that failed
/// (they give zeros then): checked after each pass, and the write abandoned with it.
pub fn write_checkpoint_streamed<V: View + Copy>(
    output: &Path,
    views: &[(&str, V)],
    metadata: HashMap<String, String>,
    compressed: bool,
    failure: &RefCell<Option<Error>>,
) -> Result<u64, Error> {
    let failed = || failure.borrow().is_some();
    let encode = |e: EncodeError| match e {
        EncodeError::Io(source) => Error::Io { path: output.to_path_buf(), source },
        source => Error::Encode { path: output.to_path_buf(), source },
    };
    // A failed read abandons the temporary: the output keeps its old content.
    let abandon = || EncodeError::Io(std::io::Error::other("a tensor could not be read"));
    let result = if compressed {
        atomic::write_atomic_with(output, |f| {
            let size = write_compressed_views_with(f, views, metadata)?;
            if failed() {
                return Err(abandon());
            }
            Ok(size)
        })
    } else {
        let mut checksums = serde_json::Map::new();
        for (n, v) in views {
            checksums.insert(n.to_string(), checksum_hex(&v.data()).into());
            if let Some(e) = failure.borrow_mut().take() {
                return Err(e);
            }
        }
        let mut metadata = metadata;
        metadata.insert(CHECKSUMS_KEY.into(), serde_json::Value::Object(checksums).to_string());
        atomic::write_atomic_path(output, |tmp| {
            safetensors::serialize_to_file(views.iter().map(|(n, v)| (*n, *v)), Some(seal(metadata)), tmp)
                .map_err(|e| EncodeError::Io(std::io::Error::other(e.to_string())))?;
            if failed() {
                return Err(abandon());
            }
            Ok(())
        })
        .and_then(|()| Ok(std::fs::metadata(output)?.len()))
    };
    match failure.borrow_mut().take() {
        Some(e) => Err(e),
        None => result.map_err(encode),
    }
}

/// Writes a checkpoint file atomically (see [`atomic`]): `views` with `metadata` (a
/// [`Meta::to_map`], perhaps with keys of the caller's own), compressed or plain; returns
/// the file's size. `output` keeps its old content when anything fails.
pub fn write_checkpoint<V: View + Copy>(
    output: &Path,
    views: &[(&str, V)],
    metadata: HashMap<String, String>,
    compressed: bool,
) -> Result<u64, Error> {
    let io = |source| Error::Io { path: output.to_path_buf(), source };
    if compressed {
        atomic::write_atomic_with(output, |f| write_compressed_views_with(f, views, metadata)).map_err(|e| match e {
            EncodeError::Io(source) => io(source),
            source => Error::Encode { path: output.to_path_buf(), source },
        })
    } else {
        let bytes = serialize_views_with(output, views, metadata)?;
        atomic::write_atomic(output, |f| emit(f, &bytes)).map_err(io)
    }
}

//! Data sets of named arrays: a safetensors file (`data.kind: tensors`) or a NumPy `.npz`
//! archive (`data.kind: npz`, as `numpy.savez` writes it). The model's inputs are the arrays
//! `model.torchscript.inputs` names (default: the one array `x`), the targets the array
//! `data.targets` names (default `y`). Dtypes, shapes, sizes and labels are checked on the
//! headers before any tensor is made.
//!
//! - The single default input `x` becomes float32 (images stored as bytes, say).
//! - Named inputs keep their kind: integers (token ids, attention masks) become int64,
//!   floats float32.
//! - Integer targets `[N]` are classes, `[N, T]` token ids (a language model, vocabulary the
//!   largest id + 1); float targets `[N]` or `[N, K]` are regression values.

use std::fs::File;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use tch::{Kind, Tensor};

use super::config::{DataConfig, DataKind};
use super::dataset::{Dataset, Task, MAX_CLASSES};
use super::error::{ArrayError, DataError};
use super::source::{check_host_memory, read_error, required_path, split_tail, val_count};
use crate::dtype::is_float;

/// The dtypes an input may have.
const INPUT_DTYPES: &[Dtype] = &[
    Dtype::F64,
    Dtype::F32,
    Dtype::F16,
    Dtype::BF16,
    Dtype::I64,
    Dtype::I32,
    Dtype::I16,
    Dtype::I8,
    Dtype::U8,
    Dtype::BOOL,
];

/// The dtypes targets may have: integers are classes or token ids, floats regression targets.
const TARGET_DTYPES: &[Dtype] =
    &[Dtype::F64, Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::I64, Dtype::I32, Dtype::I16, Dtype::I8, Dtype::U8];

fn dtype_names(table: &[Dtype]) -> String {
    table.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}

/// One array's header: its dtype (safetensors' names, the common vocabulary) and shape.
#[derive(Debug, Clone)]
struct Header {
    dtype: Dtype,
    shape: Vec<usize>,
}

/// An open file of named arrays.
enum Arrays {
    /// Mapped rather than read, so the file's bytes are not held twice on the way into
    /// tensors; its header parsed (and checked against the file's length) once, at open.
    Safetensors {
        map: memmap2::Mmap,
        /// Where the tensor data starts: after the 8-byte length and the JSON header.
        data_start: usize,
        header: safetensors::tensor::Metadata,
    },
    Npz(zip::ZipArchive<File>),
}

impl Arrays {
    fn open(cfg: &DataConfig, path: &Path) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|source| read_error("data.path", path, source))?;
        match cfg.kind {
            DataKind::Npz => zip::ZipArchive::new(file).map(Self::Npz).map_err(|e| DataError::Format {
                path: path.to_path_buf(),
                reason: format!("not a readable .npz (zip) archive: {e}"),
            }),
            _ => {
                // SAFETY: the map is only read, and only while loading. Were another process
                // to truncate the file meanwhile, a read of the lost pages would fault
                // (SIGBUS): the caveat of every mapped reader (Python's
                // `safetensors.safe_open` maps the same way), accepted for a data file that
                // nothing rewrites during a run.
                let map = unsafe { memmap2::Mmap::map(&file) }
                    .map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
                let (n, header) = SafeTensors::read_metadata(&map).map_err(|e| DataError::Format {
                    path: path.to_path_buf(),
                    reason: explain_safetensors_error(&map, &e),
                })?;
                Ok(Self::Safetensors { data_start: 8 + n, header, map })
            }
        }
    }

    /// The names of the arrays held, for errors.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = match self {
            Self::Safetensors { header, .. } => header.tensors().into_keys().collect(),
            Self::Npz(zip) => {
                zip.file_names().filter_map(|n| n.ok()).map(|n| n.trim_end_matches(".npy").to_string()).collect()
            }
        };
        names.sort();
        names
    }

    /// The bytes an array's entry holds once inflated, as its zip entry declares (`.npz`
    /// only: a safetensors header is checked against the file's length at open).
    fn stored_bytes(&mut self, name: &str) -> Option<u64> {
        match self {
            Self::Safetensors { .. } => None,
            Self::Npz(zip) => zip.by_name(&format!("{name}.npy")).ok().map(|e| e.size()),
        }
    }

    fn missing(&self, name: &str) -> ArrayError {
        ArrayError::Missing { name: name.into(), held: self.names() }
    }

    fn header(&mut self, name: &str) -> Result<Header, ArrayError> {
        let present = match self {
            Self::Safetensors { header, .. } => header.info(name).is_some(),
            Self::Npz(zip) => zip.index_for_name(&format!("{name}.npy")).is_some(),
        };
        if !present {
            return Err(self.missing(name));
        }
        match self {
            Self::Safetensors { header, .. } => {
                let t = header.info(name).expect("checked above");
                Ok(Header { dtype: t.dtype, shape: t.shape.clone() })
            }
            Self::Npz(zip) => {
                let entry = zip.by_name(&format!("{name}.npy")).map_err(entry_error(name))?;
                let npy =
                    npyz::NpyFile::new(entry).map_err(|source| ArrayError::NotNpy { name: name.into(), source })?;
                npy_header(name, &npy)
            }
        }
    }

    /// The array as a host tensor of its own kind (booleans as bytes).
    fn tensor(&mut self, name: &str, header: &Header) -> Result<Tensor, ArrayError> {
        let dims: Vec<i64> = header.shape.iter().map(|&d| d as i64).collect();
        let kind = kind_of(header.dtype);
        match self {
            Self::Safetensors { map, data_start, header: index } => {
                let info = index.info(name).ok_or_else(|| ArrayError::Vanished { name: name.into() })?;
                let (begin, end) = info.data_offsets;
                // read_metadata checked the offsets against the file's length.
                let data = &map[*data_start + begin..*data_start + end];
                // libtorch copies as many bytes as the shape says: never more than the slice holds.
                let elements = header.shape.iter().product::<usize>();
                if data.len() != elements * kind.elt_size_in_bytes() {
                    return Err(ArrayError::Bytes {
                        name: name.into(),
                        bytes: data.len(),
                        shape: header.shape.clone(),
                    });
                }
                Tensor::f_from_data_size(data, &dims, kind).map_err(|e| ArrayError::Libtorch {
                    name: name.into(),
                    message: crate::fault::libtorch_message(&e),
                })
            }
            Self::Npz(zip) => {
                let entry = zip.by_name(&format!("{name}.npy")).map_err(entry_error(name))?;
                let bad = |source: std::io::Error| ArrayError::Read { name: name.into(), source };
                let npy = npyz::NpyFile::new(entry).map_err(bad)?;
                let t = match header.dtype {
                    Dtype::F64 => Tensor::from_slice(&npy.into_vec::<f64>().map_err(bad)?),
                    Dtype::F32 => Tensor::from_slice(&npy.into_vec::<f32>().map_err(bad)?),
                    Dtype::I64 => Tensor::from_slice(&npy.into_vec::<i64>().map_err(bad)?),
                    Dtype::I32 => Tensor::from_slice(&npy.into_vec::<i32>().map_err(bad)?),
                    Dtype::I16 => Tensor::from_slice(&npy.into_vec::<i16>().map_err(bad)?),
                    Dtype::I8 => Tensor::from_slice(&npy.into_vec::<i8>().map_err(bad)?),
                    Dtype::U8 => Tensor::from_slice(&npy.into_vec::<u8>().map_err(bad)?),
                    Dtype::BOOL => {
                        let bytes: Vec<u8> = npy.into_vec::<bool>().map_err(bad)?.into_iter().map(u8::from).collect();
                        Tensor::from_slice(&bytes)
                    }
                    dtype => return Err(ArrayError::NpzDtype { name: name.into(), dtype }),
                };
                if t.numel() != header.shape.iter().product::<usize>() {
                    return Err(ArrayError::Values {
                        name: name.into(),
                        values: t.numel(),
                        shape: header.shape.clone(),
                    });
                }
                Ok(t.view(dims.as_slice()))
            }
        }
    }
}

/// The error of a zip entry that cannot be opened, naming the array.
fn entry_error(name: &str) -> impl FnOnce(zip::result::ZipError) -> ArrayError + '_ {
    move |source| ArrayError::Entry { name: name.into(), source }
}

/// A `.npy` header in safetensors' terms: C order, little- or big-endian numbers.
fn npy_header<R: std::io::Read>(name: &str, npy: &npyz::NpyFile<R>) -> Result<Header, ArrayError> {
    use npyz::TypeChar;
    if npy.order() == npyz::Order::Fortran {
        return Err(ArrayError::Fortran { name: name.into() });
    }
    let npyz::DType::Plain(ty) = npy.dtype() else {
        return Err(ArrayError::Structured { name: name.into() });
    };
    let dtype = match (ty.type_char(), ty.size_field()) {
        (TypeChar::Bool, 1) => Dtype::BOOL,
        (TypeChar::Int, 1) => Dtype::I8,
        (TypeChar::Int, 2) => Dtype::I16,
        (TypeChar::Int, 4) => Dtype::I32,
        (TypeChar::Int, 8) => Dtype::I64,
        (TypeChar::Uint, 1) => Dtype::U8,
        (TypeChar::Float, 4) => Dtype::F32,
        (TypeChar::Float, 8) => Dtype::F64,
        _ => return Err(ArrayError::NumpyDtype { name: name.into(), dtype: ty.to_string() }),
    };
    let shape = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| ArrayError::DimensionTooLarge { name: name.into(), dim: d }))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Header { dtype, shape })
}

impl Header {
    /// The bytes the array's shape and dtype declare, or `None` when that overflows (a
    /// hostile `.npy` header can declare `(16, 2^30, 2^30)` in a few hundred bytes).
    fn bytes(&self) -> Option<u64> {
        let elements = self.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(u64::try_from(d).ok()?))?;
        elements.checked_mul(kind_of(self.dtype).elt_size_in_bytes() as u64)
    }
}

/// Refuses an array whose declared size overflows or exceeds what the file holds for it,
/// before anything is allocated by it: after this, every size computed from its shape fits.
fn check_declared_size(arrays: &mut Arrays, path: &Path, name: &str, h: &Header) -> Result<(), DataError> {
    let unusable = |reason: String| DataError::Unusable { path: path.to_path_buf(), reason };
    let bytes = h.bytes().ok_or_else(|| {
        unusable(format!("array `{name}` declares shape {:?}, whose size overflows 64 bits", h.shape))
    })?;
    match arrays.stored_bytes(name) {
        Some(stored) if bytes > stored => Err(unusable(format!(
            "array `{name}` declares shape {:?} ({bytes} bytes) but its entry holds only {stored} bytes",
            h.shape
        ))),
        _ => Ok(()),
    }
}

/// The libtorch kind an array of `dtype` is read as (booleans as bytes: a file may hold
/// values other than 0 and 1, which a C++ bool must not).
fn kind_of(dtype: Dtype) -> Kind {
    if dtype == Dtype::BOOL {
        Kind::Uint8
    } else {
        crate::dtype::to_kind(dtype).expect("every accepted dtype has a kind")
    }
}

/// Loads the arrays named `inputs` (empty: the one array `x`) and `data.targets`, split into
/// training and validation examples (the last `val_fraction`).
///
/// Everything is checked on the headers before a tensor is made: dtypes, that no dimension
/// is 0, that all arrays agree on N, that the values fit in host memory; class labels are
/// checked (0 ..= [`MAX_CLASSES`]) before the model sizes its output layer by them.
pub(super) fn load(cfg: &DataConfig, inputs: &[String]) -> Result<Dataset, DataError> {
    let path = required_path(cfg)?;
    let format = |reason: String| DataError::Format { path: path.to_path_buf(), reason };
    let malformed = |source: ArrayError| DataError::Array { path: path.to_path_buf(), source };
    let named = !inputs.is_empty();
    let input_names: Vec<String> = if named { inputs.to_vec() } else { vec!["x".into()] };
    let target_name = cfg.targets.as_str();
    let mut arrays = Arrays::open(cfg, path)?;
    let mut headers = Vec::with_capacity(input_names.len());
    for name in &input_names {
        let h = arrays.header(name).map_err(malformed)?;
        check_dtype(name, h.dtype, INPUT_DTYPES).map_err(malformed)?;
        check_declared_size(&mut arrays, path, name, &h)?;
        headers.push(h);
    }
    let y = arrays.header(target_name).map_err(malformed)?;
    check_dtype(target_name, y.dtype, TARGET_DTYPES).map_err(malformed)?;
    check_declared_size(&mut arrays, path, target_name, &y)?;
    let shapes = || {
        input_names
            .iter()
            .zip(&headers)
            .map(|(n, h)| format!("`{n}` is {:?}", h.shape))
            .chain(std::iter::once(format!("`{target_name}` is {:?}", y.shape)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let n = y.shape.first().copied().unwrap_or(0);
    // The first input sizes the built-in models, so it has a feature dimension; a named
    // input after it may hold one value per example (`lengths` [N] beside `input_ids`).
    let rank_ok = |i: usize, h: &Header| h.shape.len() >= 2 || (named && i > 0 && h.shape.len() == 1);
    if let Some((i, h)) = headers.iter().enumerate().find(|(i, h)| !rank_ok(*i, h)) {
        let which = if i == 0 { "the first input needs [N, ...]" } else { "a named input needs [N] or [N, ...]" };
        return Err(format(format!("{}: `{}` is {:?}; {which}", shapes(), input_names[i], h.shape)));
    }
    if let Some((name, h)) = input_names.iter().zip(&headers).find(|(_, h)| h.shape[0] != n) {
        return Err(format(format!(
            "{}: `{name}` has {} examples and `{target_name}` {n}: every array needs the same first dimension N",
            shapes(),
            h.shape[0]
        )));
    }
    if !(1..=2).contains(&y.shape.len()) {
        return Err(format(format!("{}: need targets [N] or [N, K]", shapes())));
    }
    if headers.iter().chain(std::iter::once(&y)).any(|h| h.shape.contains(&0)) {
        return Err(format(format!("{}: no dimension may be 0", shapes())));
    }
    let floating = is_float(y.dtype);
    if !floating && y.shape.len() == 2 && !named {
        return Err(format(format!(
            "{}: integer `{target_name}` [N, T] (token ids) needs named inputs (model.torchscript.inputs)",
            shapes()
        )));
    }
    // Every array's declared size was checked against what the file holds for it
    // (`check_declared_size`), so these conversions and products do not overflow.
    let elements = |h: &Header| h.shape.iter().product::<usize>() as u64;
    let native = |h: &Header| h.bytes().expect("check_declared_size passed it");
    // libtorch's copy of each array, then its converted form (at most 8 bytes a value).
    let needed: u64 = headers.iter().chain(std::iter::once(&y)).map(|h| native(h) + 8 * elements(h)).sum();
    check_host_memory(path, needed)?;
    let val = val_count(n, cfg.val_fraction, path)?;

    let mut tensors = Vec::with_capacity(headers.len());
    for (name, h) in input_names.iter().zip(&headers) {
        let t = arrays.tensor(name, h).map_err(malformed)?;
        // The default `x` is always float32 (the built-in models' input); named inputs keep
        // integer ids as int64, as embedding layers need.
        let kind = if !named || is_float(h.dtype) { Kind::Float } else { Kind::Int64 };
        let t = t.to_kind(kind);
        check_finite(path, name, &t)?;
        tensors.push(t);
    }
    let yt = arrays.tensor(target_name, &y).map_err(malformed)?;
    let (task, yt) = if floating {
        let outputs = if y.shape.len() == 2 { y.shape[1] as i64 } else { 1 };
        let yt = yt.to_kind(Kind::Float);
        check_finite(path, target_name, &yt)?;
        (Task::Regression { outputs }, yt.view([n as i64, outputs]))
    } else {
        let yt = yt.to_kind(Kind::Int64);
        let (lo, hi) = (yt.min().int64_value(&[]), yt.max().int64_value(&[]));
        if lo < 0 || hi >= MAX_CLASSES {
            return Err(format(format!(
                "`{target_name}` holds {} {}: they must be in 0..{MAX_CLASSES}",
                if y.shape.len() == 2 { "token id" } else { "class" },
                if lo < 0 { lo } else { hi }
            )));
        }
        let task = if y.shape.len() == 2 {
            Task::LanguageModel { vocab: hi + 1 }
        } else {
            Task::Classification { classes: hi + 1 }
        };
        (task, yt)
    };
    let input_shape = headers[0].shape[1..].iter().map(|&d| d as i64).collect();
    let (train, val) = split_tail(tensors, yt, val);
    Ok(Dataset { train, val, task, input_shape })
}

/// Refuses a float array holding NaN or infinity (after its conversion to float32, where a
/// float64 beyond float32's range becomes infinite), naming the array and the first such
/// value's index: the first batch holding it would make the loss non-finite, and the run
/// would stop blaming the learning rate.
fn check_finite(path: &Path, name: &str, t: &Tensor) -> Result<(), DataError> {
    if !t.is_floating_point() {
        return Ok(());
    }
    let bad = t.isfinite().logical_not();
    if bad.any().int64_value(&[]) == 0 {
        return Ok(());
    }
    let first = bad.flatten(0, -1).to_kind(Kind::Uint8).argmax(0, false).int64_value(&[]);
    let value = t.flatten(0, -1).double_value(&[first]);
    let mut index = Vec::new();
    let mut rest = first;
    for &d in t.size().iter().rev() {
        index.push(rest % d);
        rest /= d;
    }
    index.reverse();
    Err(DataError::Unusable {
        path: path.to_path_buf(),
        reason: format!(
            "array `{name}` holds {value} at index {index:?} (as float32): data must be finite; drop or repair those \
             rows"
        ),
    })
}

/// Refuses a dtype outside `table`, naming the array.
fn check_dtype(name: &str, dtype: Dtype, table: &[Dtype]) -> Result<(), ArrayError> {
    if table.contains(&dtype) {
        Ok(())
    } else {
        Err(unsupported(name, &dtype.to_string(), table))
    }
}

/// An array of `dtype` (as the file names it) outside `table`.
fn unsupported(name: &str, dtype: &str, table: &[Dtype]) -> ArrayError {
    ArrayError::Unsupported { name: name.into(), dtype: dtype.into(), supported: dtype_names(table) }
}

/// The safetensors crate's error, made specific where it can be: a header naming a dtype
/// the crate does not know fails to deserialize as a whole, so its entries are read as
/// plain JSON to say which array and which dtype it is.
fn explain_safetensors_error(bytes: &[u8], e: &safetensors::SafeTensorError) -> String {
    let header = bytes
        .get(..8)
        .map(|n| u64::from_le_bytes(n.try_into().expect("8 bytes")))
        .and_then(|n| usize::try_from(n).ok())
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?))
        .and_then(|h| serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(h).ok());
    if let Some(header) = header {
        for (name, entry) in header.iter().filter(|(n, _)| n.as_str() != "__metadata__") {
            if let Some(dtype) = entry["dtype"].as_str() {
                if !INPUT_DTYPES.iter().any(|d| d.to_string() == dtype) {
                    return unsupported(name, dtype, INPUT_DTYPES).to_string();
                }
            }
        }
    }
    format!("not a readable safetensors file: {e}")
}

//! `data.kind: npy`: a folder of `.npy` files as `np.save` (or `np.lib.format.open_memmap`)
//! writes them, one per array, named as the `tensors` kind names its arrays: the inputs `x`
//! (or those `model.torchscript.inputs` names), the targets `data.targets` (`y`). Examples are
//! read row by row with positioned reads, straight into their batches, so a folder larger
//! than host memory trains; the last `data.val_fraction` of the rows are held out.
//!
//! Every dtype `np.save` writes for numbers is read: bool, int8 to int64, uint8 to uint64,
//! float16, float32 and float64, little- or big-endian. As in the `tensors` kind, the default
//! input `x` becomes float32, named inputs keep integers as int64, integer targets `[N]` are
//! classes and float targets regression values. Fortran order and structured dtypes are
//! refused naming the array, and so is a file shorter (or longer) than its header declares.
//! Float inputs are checked finite as each example is read; the targets are checked (and
//! the classes counted) by one scan at start.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::Kind;

use super::config::DataConfig;
use super::dataset::{Dataset, Task, MAX_CLASSES};
use super::error::{ArrayError, DataError};
use super::examples::{ExampleError, Examples, Layout, Pass};
use super::source::{read_error, val_count};
use super::split::Split;

/// How numbers are stored in an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    Bool,
    Int(usize),
    Uint(usize),
    Float(usize),
}

impl Stored {
    fn size(self) -> usize {
        match self {
            Stored::Bool => 1,
            Stored::Int(n) | Stored::Uint(n) | Stored::Float(n) => n,
        }
    }
}

/// One `.npy` file: where its rows start, how they are stored, what they become.
#[derive(Debug)]
struct Array {
    name: String,
    path: PathBuf,
    file: File,
    stored: Stored,
    big_endian: bool,
    shape: Vec<usize>,
    /// Where the data starts (after the header).
    offset: u64,
    /// Values per row (the product of the shape after the first dimension).
    row: usize,
    /// The kind each value becomes: float32 or int64.
    kind: Kind,
}

impl Array {
    /// Opens `dir/name.npy` and reads its header.
    fn open(dir: &Path, name: &str) -> Result<Self, DataError> {
        let path = dir.join(format!("{name}.npy"));
        let malformed = |source: ArrayError| DataError::Array { path: path.clone(), source };
        let file = File::open(&path).map_err(|e| read_error("data.path", &path, e))?;
        let len = file.metadata().map_err(|e| read_error("data.path", &path, e))?.len();
        let npy = npyz::NpyFile::new(std::io::BufReader::new(&file)).map_err(|e| DataError::Format {
            path: path.clone(),
            reason: format!("not a .npy file np.save writes: {e}"),
        })?;
        if npy.order() == npyz::Order::Fortran {
            return Err(malformed(ArrayError::Fortran { name: name.into() }));
        }
        let npyz::DType::Plain(ty) = npy.dtype() else {
            return Err(malformed(ArrayError::Structured { name: name.into() }));
        };
        use npyz::TypeChar;
        let stored = match (ty.type_char(), ty.size_field()) {
            (TypeChar::Bool, 1) => Stored::Bool,
            (TypeChar::Int, n @ (1 | 2 | 4 | 8)) => Stored::Int(n as usize),
            (TypeChar::Uint, n @ (1 | 2 | 4 | 8)) => Stored::Uint(n as usize),
            (TypeChar::Float, n @ (2 | 4 | 8)) => Stored::Float(n as usize),
            _ => return Err(malformed(ArrayError::NumpyDtype { name: name.into(), dtype: ty.to_string() })),
        };
        let big_endian = ty.endianness() == npyz::Endianness::Big;
        let shape = npy
            .shape()
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| malformed(ArrayError::DimensionTooLarge { name: name.into(), dim: d }))
            })
            .collect::<Result<Vec<_>, _>>()?;
        drop(npy);
        let offset = data_offset(&file).map_err(|reason| DataError::Format { path: path.clone(), reason })?;
        let declared = shape
            .iter()
            .try_fold(stored.size() as u64, |n, &d| n.checked_mul(d as u64))
            .filter(|bytes| offset.checked_add(*bytes).is_some());
        match declared {
            Some(bytes) if offset + bytes == len => {}
            Some(bytes) => {
                return Err(DataError::Unusable {
                    path: path.clone(),
                    reason: format!(
                        "array `{name}` declares shape {shape:?} ({bytes} bytes after a {offset}-byte header) but the \
                         file holds {} bytes of data",
                        len.saturating_sub(offset)
                    ),
                });
            }
            None => {
                return Err(DataError::Unusable {
                    path: path.clone(),
                    reason: format!("array `{name}` declares shape {shape:?}, whose size overflows 64 bits"),
                });
            }
        }
        let row = shape.iter().skip(1).product();
        Ok(Self { name: name.into(), path, file, stored, big_endian, shape, offset, row, kind: Kind::Float })
    }

    fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    fn row_bytes(&self) -> usize {
        self.row * self.stored.size()
    }

    /// Reads the stored bytes of rows `first ..` into `raw` (a whole number of rows).
    fn read_rows(&self, first: usize, raw: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact_at(raw, self.offset + (first * self.row_bytes()) as u64)
    }

    /// Decodes one stored value.
    fn value(&self, b: &[u8]) -> Value {
        let mut buf = [0u8; 8];
        let n = b.len();
        buf[..n].copy_from_slice(b);
        if self.big_endian {
            buf[..n].reverse();
        }
        match self.stored {
            Stored::Bool => Value::Int(i64::from(b[0] != 0)),
            Stored::Int(1) => Value::Int(i64::from(buf[0] as i8)),
            Stored::Int(2) => Value::Int(i64::from(i16::from_le_bytes([buf[0], buf[1]]))),
            Stored::Int(4) => Value::Int(i64::from(i32::from_le_bytes(buf[..4].try_into().unwrap()))),
            Stored::Int(_) => Value::Int(i64::from_le_bytes(buf)),
            Stored::Uint(8) => Value::Uint(u64::from_le_bytes(buf)),
            Stored::Uint(_) => Value::Int(u64::from_le_bytes(buf) as i64),
            Stored::Float(2) => Value::Float(f64::from(half::f16::from_le_bytes([buf[0], buf[1]]))),
            Stored::Float(4) => Value::Float(f64::from(f32::from_le_bytes(buf[..4].try_into().unwrap()))),
            Stored::Float(_) => Value::Float(f64::from_le_bytes(buf)),
        }
    }

    /// Writes row `i` into `out` as `self.kind`; an error names the array and the value.
    fn read_row_into(&self, i: usize, out: &mut [u8]) -> Result<(), String> {
        let mut raw = vec![0u8; self.row_bytes()];
        self.read_rows(i, &mut raw).map_err(|e| format!("reading array `{}`: {e}", self.name))?;
        let size = self.stored.size();
        for (k, (b, dst)) in raw.chunks_exact(size).zip(out.chunks_exact_mut(self.kind.elt_size_in_bytes())).enumerate()
        {
            match (self.kind, self.value(b)) {
                (Kind::Float, v) => {
                    let f = v.as_f64() as f32;
                    if !f.is_finite() {
                        return Err(format!("array `{}` holds {} at value {k} of the row", self.name, v.as_f64()));
                    }
                    dst.copy_from_slice(&f.to_le_bytes());
                }
                (_, Value::Uint(u)) if u > i64::MAX as u64 => {
                    return Err(format!("array `{}` holds {u}, beyond int64, at value {k} of the row", self.name));
                }
                (_, v) => dst.copy_from_slice(&v.as_i64().to_le_bytes()),
            }
        }
        Ok(())
    }
}

/// A stored number, widened.
#[derive(Debug, Clone, Copy)]
enum Value {
    Int(i64),
    Uint(u64),
    Float(f64),
}

impl Value {
    fn as_f64(self) -> f64 {
        match self {
            Value::Int(v) => v as f64,
            Value::Uint(v) => v as f64,
            Value::Float(v) => v,
        }
    }

    fn as_i64(self) -> i64 {
        match self {
            Value::Int(v) => v,
            Value::Uint(v) => v as i64,
            Value::Float(v) => v as i64,
        }
    }
}

/// Where a `.npy` file's data starts, from its preamble: the magic string, the version and
/// the header's length (2 bytes in version 1, 4 from version 2), as the format specifies.
fn data_offset(file: &File) -> Result<u64, String> {
    let mut head = [0u8; 12];
    file.read_exact_at(&mut head, 0).map_err(|e| format!("reading its preamble: {e}"))?;
    if &head[..6] != b"\x93NUMPY" {
        return Err("no .npy magic string".into());
    }
    Ok(match head[6] {
        1 => 10 + u64::from(u16::from_le_bytes([head[8], head[9]])),
        2 | 3 => 12 + u64::from(u32::from_le_bytes([head[8], head[9], head[10], head[11]])),
        v => return Err(format!(".npy format version {v} is not one numpy writes")),
    })
}

/// The arrays of a folder, as examples.
#[derive(Debug)]
struct Rows {
    inputs: Vec<Array>,
    target: Array,
    layout: Layout,
}

impl Examples for Rows {
    fn len(&self) -> usize {
        self.target.rows()
    }

    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn read(&self, i: usize, _: Pass, out: &mut [&mut [u8]]) -> Result<(), ExampleError> {
        for (array, buf) in self.inputs.iter().chain(std::iter::once(&self.target)).zip(out.iter_mut()) {
            array.read_row_into(i, buf).map_err(|reason| ExampleError {
                path: array.path.clone(),
                index: i,
                reason,
            })?;
        }
        Ok(())
    }
}

/// Bytes the target scan reads at a time.
const SCAN_BYTES: usize = 8 << 20;

/// The smallest and largest value of an integer array, or the first non-finite value of a
/// float one, read in pieces.
fn scan(array: &Array) -> Result<(i64, i64), DataError> {
    let per = (SCAN_BYTES / array.row_bytes().max(1)).max(1);
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    let mut first = 0;
    let unusable = |reason: String| DataError::Unusable { path: array.path.clone(), reason };
    while first < array.rows() {
        let count = per.min(array.rows() - first);
        let mut raw = vec![0u8; count * array.row_bytes()];
        array.read_rows(first, &mut raw).map_err(|e| DataError::Io { path: array.path.clone(), source: e })?;
        for (k, b) in raw.chunks_exact(array.stored.size()).enumerate() {
            match array.value(b) {
                Value::Float(f) if !f.is_finite() || !(f as f32).is_finite() => {
                    let at = first * array.row + k;
                    return Err(unusable(format!("array `{}` holds {f} at flat index {at}", array.name)));
                }
                Value::Float(_) => {}
                v => {
                    let x = match v {
                        Value::Uint(u) if u > i64::MAX as u64 => i64::MAX,
                        v => v.as_i64(),
                    };
                    (lo, hi) = (lo.min(x), hi.max(x));
                }
            }
        }
        first += count;
    }
    Ok((lo, hi))
}

/// Opens the folder `data.path` of `.npy` arrays (see the module docs).
pub(super) fn load(cfg: &DataConfig, inputs: &[String]) -> Result<Dataset, DataError> {
    let dir =
        cfg.path.as_deref().ok_or_else(|| DataError::Config("data.kind npy needs data.path (a folder)".into()))?;
    if !dir.is_dir() {
        return Err(DataError::NotFound { key: "data.path", path: dir.to_path_buf() });
    }
    let named = !inputs.is_empty();
    let names: Vec<String> = if named { inputs.to_vec() } else { vec!["x".into()] };
    let mut arrays = names.iter().map(|n| Array::open(dir, n)).collect::<Result<Vec<_>, _>>()?;
    let mut target = Array::open(dir, &cfg.targets)?;
    let format = |path: &Path, reason: String| DataError::Format { path: path.to_path_buf(), reason };
    let n = target.rows();
    for (i, a) in arrays.iter_mut().enumerate() {
        // As in the `tensors` kind: the first input has a feature dimension, a later named one
        // may hold one value per example.
        if a.shape.len() < 2 && !(named && i > 0 && a.shape.len() == 1) {
            return Err(format(&a.path, format!("array `{}` is {:?}: an input needs [N, ...]", a.name, a.shape)));
        }
        if a.rows() != n {
            return Err(format(
                &a.path,
                format!(
                    "array `{}` has {} rows and `{}` {n}: every array needs the same N",
                    a.name,
                    a.rows(),
                    target.name
                ),
            ));
        }
        if a.shape.contains(&0) {
            return Err(format(&a.path, format!("array `{}` is {:?}: no dimension may be 0", a.name, a.shape)));
        }
        let float = matches!(a.stored, Stored::Float(_));
        a.kind = if !named || float { Kind::Float } else { Kind::Int64 };
    }
    if !(1..=2).contains(&target.shape.len()) || target.shape.contains(&0) {
        return Err(format(
            &target.path,
            format!("targets `{}` are {:?}: need [N] or [N, K]", target.name, target.shape),
        ));
    }
    let val = val_count(n, cfg.val_fraction, &target.path)?;
    let (lo, hi) = scan(&target)?;
    let floating = matches!(target.stored, Stored::Float(_));
    let width = if target.shape.len() == 2 { target.shape[1] as i64 } else { 1 };
    let task = if floating {
        target.kind = Kind::Float;
        Task::Regression { outputs: width }
    } else {
        target.kind = Kind::Int64;
        if lo < 0 || hi >= MAX_CLASSES {
            return Err(format(
                &target.path,
                format!(
                    "`{}` holds class {}: classes must be in 0..{MAX_CLASSES}",
                    target.name,
                    if lo < 0 { lo } else { hi }
                ),
            ));
        }
        if target.shape.len() == 2 && !named {
            return Err(format(
                &target.path,
                format!("integer `{}` [N, T] (token ids) needs named inputs (model.torchscript.inputs)", target.name),
            ));
        }
        if target.shape.len() == 2 {
            Task::LanguageModel { vocab: hi + 1 }
        } else {
            Task::Classification { classes: hi + 1 }
        }
    };
    let target_shape = match task {
        Task::Regression { outputs } => vec![outputs],
        _ => target.shape[1..].iter().map(|&d| d as i64).collect(),
    };
    let layout = Layout {
        inputs: arrays.iter().map(|a| (a.shape[1..].iter().map(|&d| d as i64).collect(), a.kind)).collect(),
        target: (target_shape, target.kind),
    };
    let input_shape = layout.inputs[0].0.clone();
    let all = Split::streamed(Arc::new(Rows { inputs: arrays, target, layout }));
    let train = n - val;
    Ok(Dataset { train: all.rows(0, train as i64), val: all.rows(train as i64, val as i64), task, input_shape })
}

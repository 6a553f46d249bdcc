//! Data sets from a safetensors file of `x`/`y`: dtypes, shapes, sizes and labels checked
//! on the header before any tensor is made.

use safetensors::{Dtype, SafeTensors};
use tch::{Kind, Tensor};

use super::*;

/// The safetensors dtypes `x` may have (all become float32).
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

/// The safetensors dtypes `y` may have: integers are classes, floats regression targets.
const TARGET_DTYPES: &[Dtype] =
    &[Dtype::F64, Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::I64, Dtype::I32, Dtype::I16, Dtype::I8, Dtype::U8];

fn dtype_names(table: &[Dtype]) -> String {
    table.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}

/// A safetensors file with tensors `x` (`[N, ...]`, any float or integer dtype, used as
/// float32) and `y` (`[N]` integers: classes; or `[N]`/`[N, K]` floats: regression targets).
///
/// Everything is checked on the header before a tensor is made: dtypes, that no dimension
/// is 0, that `x` and `y` agree on N, that the values fit in host memory; class labels are
/// checked (0 ..= [`MAX_CLASSES`]) before the model sizes its output layer by them.
pub(super) fn load(cfg: &DataConfig) -> Result<Dataset, DataError> {
    let path = required_path(cfg)?;
    let format = |reason: String| DataError::Format { path: path.to_path_buf(), reason };
    let file = std::fs::File::open(path).map_err(|source| read_error(path, source))?;
    // Mapped rather than read, so the file's bytes are not held twice on the way into tensors.
    // SAFETY: the map is only read, and only within this function. Were another process to
    // truncate the file meanwhile, a read of the lost pages would fault (SIGBUS): the caveat
    // of every mapped reader (Python's `safetensors.safe_open` maps the same way), accepted
    // for a data file that nothing rewrites during a run.
    let map =
        unsafe { memmap2::Mmap::map(&file) }.map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    let st = SafeTensors::deserialize(&map).map_err(|e| format(explain_safetensors_error(&map, &e)))?;
    let x = st.tensor("x").map_err(|_| format("no tensor `x`".into()))?;
    let y = st.tensor("y").map_err(|_| format("no tensor `y`".into()))?;
    let x_kind = kind_of("x", x.dtype(), INPUT_DTYPES).map_err(format)?;
    let y_kind = kind_of("y", y.dtype(), TARGET_DTYPES).map_err(format)?;
    let (x_shape, y_shape) = (x.shape(), y.shape());
    let shapes = || format!("`x` is {x_shape:?} and `y` is {y_shape:?}");
    if x_shape.len() < 2 || !(1..=2).contains(&y_shape.len()) || y_shape[0] != x_shape[0] {
        return Err(format(format!("{}: need [N, ...] and [N] or [N, K]", shapes())));
    }
    if x_shape.contains(&0) || y_shape.contains(&0) {
        return Err(format(format!("{}: no dimension may be 0", shapes())));
    }
    let floating = matches!(y_kind, Kind::Double | Kind::Float | Kind::Half | Kind::BFloat16);
    if !floating && y_shape.len() != 1 {
        return Err(format(format!("{}: integer `y` must be [N] class indices", shapes())));
    }
    // No dimension is 0 and the header matched the data's length, so every size is at most
    // the file's length: these conversions and products do not overflow.
    let dims = |shape: &[usize]| shape.iter().map(|&d| d as i64).collect::<Vec<_>>();
    let n = x_shape[0];
    let val = val_count(n, cfg.val_fraction, path)?;
    let x_elems = x_shape.iter().product::<usize>() as u64;
    let y_elems = y_shape.iter().product::<usize>() as u64;
    // libtorch's copy of each tensor, then its float32 (x, float y) or int64 (y) form.
    let needed = x.data().len() as u64 + 4 * x_elems + y.data().len() as u64 + 8 * y_elems;
    check_host_memory(path, needed)?;
    let tensor = |name: &str, view: &safetensors::tensor::TensorView<'_>, kind: Kind| {
        // libtorch copies as many bytes as the shape says: never more than the slice holds.
        let elements = view.shape().iter().product::<usize>();
        if view.data().len() != elements * kind.elt_size_in_bytes() {
            return Err(format(format!("tensor `{name}`: {} bytes for shape {:?}", view.data().len(), view.shape())));
        }
        Tensor::f_from_data_size(view.data(), &dims(view.shape()), kind)
            .map_err(|e| format(format!("tensor `{name}`: {}", crate::model::libtorch_message(&e))))
    };
    let xt = tensor("x", &x, x_kind)?.to_kind(Kind::Float);
    let yt = tensor("y", &y, y_kind)?;
    let (task, yt) = if floating {
        let outputs = if y_shape.len() == 2 { y_shape[1] as i64 } else { 1 };
        (Task::Regression { outputs }, yt.to_kind(Kind::Float).view([n as i64, outputs]))
    } else {
        let yt = yt.to_kind(Kind::Int64);
        let (lo, hi) = (yt.min().int64_value(&[]), yt.max().int64_value(&[]));
        if lo < 0 || hi >= MAX_CLASSES {
            return Err(format(format!(
                "`y` holds class {}: classes must be in 0..{MAX_CLASSES}",
                if lo < 0 { lo } else { hi }
            )));
        }
        (Task::Classification { classes: hi + 1 }, yt)
    };
    let input_shape = dims(&x_shape[1..]);
    let (train, val) = split_tail(xt, yt, val);
    Ok(Dataset { train, val, task, input_shape })
}

/// The libtorch kind of tensor `name`'s dtype, or which dtype is not supported.
fn kind_of(name: &str, dtype: Dtype, table: &[Dtype]) -> Result<Kind, String> {
    if !table.contains(&dtype) {
        return Err(format!(
            "tensor `{name}` has dtype {dtype}, which is not supported (supported: {})",
            dtype_names(table)
        ));
    }
    // Booleans are read as bytes: a file may hold values other than 0 and 1, which a C++
    // bool must not.
    Ok(if dtype == Dtype::BOOL {
        Kind::Uint8
    } else {
        crate::dtype::to_kind(dtype).expect("every listed dtype has a kind")
    })
}

/// The safetensors crate's error, made specific where it can be: a header naming a dtype
/// the crate does not know fails to deserialize as a whole, so its `x`/`y` entries are read
/// as plain JSON to say which dtype it is.
fn explain_safetensors_error(bytes: &[u8], e: &safetensors::SafeTensorError) -> String {
    let header = bytes
        .get(..8)
        .map(|n| u64::from_le_bytes(n.try_into().expect("8 bytes")))
        .and_then(|n| usize::try_from(n).ok())
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?))
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(h).ok());
    if let Some(header) = header {
        for (name, table) in [("x", INPUT_DTYPES), ("y", TARGET_DTYPES)] {
            if let Some(dtype) = header[name]["dtype"].as_str() {
                if !table.iter().any(|d| d.to_string() == dtype) {
                    return format!(
                        "tensor `{name}` has dtype {dtype}, which is not supported (supported: {})",
                        dtype_names(table)
                    );
                }
            }
        }
    }
    format!("not a readable safetensors file: {e}")
}

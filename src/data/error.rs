//! Why a data set cannot be loaded; each error names the file.

use std::path::PathBuf;

use safetensors::Dtype;

/// Failures to load a data set; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file of the data set is not there.
    #[error("data file {path} not found (data.dir is {dir}; on Debian: apt-get install dataset-fashion-mnist, or --set data.dir=FOLDER)")]
    Missing {
        /// The file looked for.
        path: PathBuf,
        /// The configured folder.
        dir: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read data file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not a well-formed IDX file.
    #[error("data file {path} is malformed: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file a configuration key names is not there.
    #[error("{key} {path} not found")]
    NotFound {
        /// The key naming the file (`data.path`).
        key: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// Loading the data set would need more host memory than there is.
    #[error("data file {path} needs {} of host memory once loaded, more than the {} of {from} available", bytesize::ByteSize(*needed), bytesize::ByteSize(*available))]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Bytes it would take.
        needed: u64,
        /// Bytes available (`MemAvailable`, or the memory cgroup's headroom when smaller).
        available: u64,
        /// Where `available` comes from ([`crate::memory::probe::HostMemory::available_from`]).
        from: String,
    },
    /// A data file that reads but cannot be used: sizes that overflow or exceed what the
    /// file holds, non-finite values, an image too large to decode in the memory there is.
    #[error("data file {path} cannot be used: {reason}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the array or image.
        reason: String,
    },
    /// An array of a file of named arrays is missing, unreadable or not of a usable dtype.
    #[error("data file {path} is malformed: {source}")]
    Array {
        /// The file.
        path: PathBuf,
        /// What is wrong with which array.
        source: ArrayError,
    },
    /// The data section of the configuration is incomplete.
    #[error("{0}")]
    Config(String),
    /// Images and labels disagree.
    #[error("{split} split of {dir} is inconsistent: {reason}")]
    Mismatch {
        /// `train` or `t10k`.
        split: &'static str,
        /// The data folder.
        dir: PathBuf,
        /// What disagrees.
        reason: String,
    },
}

impl DataError {
    /// Whether the configuration is at fault (a file it names is missing) or the data can
    /// never work as it is ([`DataError::Unusable`]), so the exit code is the usage one (2),
    /// rather than the data's (1).
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Missing { .. } | Self::NotFound { .. } | Self::Config(_) | Self::Unusable { .. })
    }
}

/// What is wrong with one array of a file: its error names it.
#[derive(Debug, thiserror::Error)]
pub enum ArrayError {
    /// The file holds no array of that name.
    #[error("no array `{name}` (it holds: {})", held.join(", "))]
    Missing {
        /// The array looked for.
        name: String,
        /// The arrays the file holds, sorted.
        held: Vec<String>,
    },
    /// The array's header was there when checked, its entry is not now.
    #[error("no array `{name}`")]
    Vanished {
        /// The array.
        name: String,
    },
    /// The array's zip entry cannot be opened.
    #[error("array `{name}`: {source}")]
    Entry {
        /// The array.
        name: String,
        /// The zip reader's error.
        source: zip::result::ZipError,
    },
    /// The array's entry is not a `.npy` array.
    #[error("array `{name}`: not a .npy array: {source}")]
    NotNpy {
        /// The array.
        name: String,
        /// The `.npy` reader's error.
        source: std::io::Error,
    },
    /// The array's values cannot be read.
    #[error("array `{name}`: {source}")]
    Read {
        /// The array.
        name: String,
        /// The `.npy` reader's error.
        source: std::io::Error,
    },
    /// libtorch refused the array's bytes.
    #[error("array `{name}`: {message}")]
    Libtorch {
        /// The array.
        name: String,
        /// libtorch's message, on one line.
        message: String,
    },
    /// The array's data is not the size its shape says.
    #[error("array `{name}`: {bytes} bytes for shape {shape:?}")]
    Bytes {
        /// The array.
        name: String,
        /// Bytes its data holds.
        bytes: usize,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// The array holds another number of values than its shape says.
    #[error("array `{name}`: {values} values for shape {shape:?}")]
    Values {
        /// The array.
        name: String,
        /// Values read.
        values: usize,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A dtype the `.npz` reader does not read into a tensor.
    #[error("array `{name}` has dtype {dtype}, which .npz data cannot hold here")]
    NpzDtype {
        /// The array.
        name: String,
        /// Its dtype.
        dtype: Dtype,
    },
    /// A `.npy` array in Fortran order.
    #[error("array `{name}` is in Fortran order; save it with numpy.ascontiguousarray")]
    Fortran {
        /// The array.
        name: String,
    },
    /// A `.npy` structured array.
    #[error("array `{name}` is a structured array; save plain numeric arrays")]
    Structured {
        /// The array.
        name: String,
    },
    /// A NumPy dtype not read.
    #[error(
        "array `{name}` has NumPy dtype {dtype}, which is not supported (supported: bool, int8/16/32/64, uint8, \
         float32, float64; data.kind npy also reads uint16/32/64 and float16)"
    )]
    NumpyDtype {
        /// The array.
        name: String,
        /// NumPy's name of it (`<c16`).
        dtype: String,
    },
    /// A `.npy` dimension beyond this machine's sizes.
    #[error("array `{name}`: dimension {dim} is too large")]
    DimensionTooLarge {
        /// The array.
        name: String,
        /// The dimension.
        dim: u64,
    },
    /// A dtype outside those the array's role takes.
    #[error("array `{name}` has dtype {dtype}, which is not supported (supported: {supported})")]
    Unsupported {
        /// The array.
        name: String,
        /// Its dtype, as the file names it.
        dtype: String,
        /// The dtypes taken, comma-separated.
        supported: String,
    },
}

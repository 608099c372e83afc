//! The library's error type: every failure names the file and, where there
//! is one, the tensor or layer it concerns.

use std::path::PathBuf;

/// Everything that can go wrong while reading, describing or measuring a
/// checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file or directory could not be opened, mapped or read.
    #[error("{path}: {error}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The operating system's error.
        error: std::io::Error,
    },

    /// A checkpoint file changed while it was read (another process wrote
    /// or truncated it): nothing read from it is kept.
    #[error("{path}: the file changed while it was read (another process wrote or truncated it): not measured; scan it again once it is written")]
    Changed {
        /// The file that changed.
        path: PathBuf,
    },

    /// The safetensors container itself is malformed (truncated, bad header,
    /// offsets out of range or overlapping, header length beyond the file).
    #[error("{path}: malformed safetensors file: {reason}")]
    Malformed {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it, naming the tensor where the format does.
        reason: String,
    },

    /// A file in none of the formats read: no format's first bytes, and not
    /// a safetensors file either (a header length beyond the file, or a
    /// header that is no JSON object), nor named as one.
    #[error(
        "{path}: not a checkpoint in a format cntscope reads (safetensors; torch.save or TorchScript; NumPy \
         .npy / .npz; Keras .keras / .h5; Flax msgpack; Orbax folders; TensorFlow .index): {what}"
    )]
    UnknownFormat {
        /// The file concerned.
        path: PathBuf,
        /// What it holds instead (`the file is empty`, `it begins with ...`).
        what: String,
    },

    /// A PyTorch checkpoint is malformed, or holds what the restricted
    /// unpickler refuses (a global other than tensors, storages and plain
    /// containers: nothing is ever executed).
    #[error("{path}: PyTorch checkpoint: {reason}")]
    Torch {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it, or what was refused.
        reason: String,
    },

    /// A Flax msgpack file (`flax.serialization.to_bytes`) is malformed,
    /// or holds arrays that are not read.
    #[error("{path}: Flax checkpoint: {reason}")]
    Flax {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A TensorFlow checkpoint (its `.index` table, its data files) is
    /// malformed, or holds what is not read.
    #[error("{path}: TensorFlow checkpoint: {reason}")]
    TensorFlow {
        /// The checkpoint's index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// An Orbax checkpoint directory (its OCDBT database, its Zarr arrays)
    /// is malformed, or holds what is not read.
    #[error("{path}: Orbax checkpoint: {reason}")]
    Orbax {
        /// The checkpoint's folder.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A NumPy file is malformed, or not a checkpoint of named weights.
    #[error("{path}: NumPy file: {reason}")]
    Numpy {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A Keras weight file (HDF5, or a `.keras` archive) is malformed, or
    /// stored in a way that is not read (chunked, compressed, the newer
    /// HDF5 structures of `libver="latest"`).
    #[error("{path}: Keras file: {reason}")]
    Keras {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A flat-matrix zoo (matrix, layout table, metrics table) is
    /// malformed or inconsistent.
    #[error("{path}: flat-matrix zoo: {reason}")]
    FlatZoo {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A sharded checkpoint's index file is unreadable or inconsistent.
    #[error("{path}: bad shard index: {reason}")]
    BadIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A tensor is stored in a dtype the analysis does not read.
    #[error("{path}: tensor `{tensor}` has unsupported dtype {dtype} (supported: F32, F16, BF16, F64)")]
    UnsupportedDtype {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The dtype as the file names it.
        dtype: String,
    },

    /// A tensor the graph needs is not in the checkpoint.
    #[error("{path}: tensor `{tensor}` not found")]
    MissingTensor {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
    },

    /// The tensors do not form the network the spec or discovery describes
    /// (wrong rank, a shape that breaks the chain, a bad conv geometry).
    #[error("{path}: {reason}")]
    Graph {
        /// The checkpoint.
        path: PathBuf,
        /// What does not fit, naming the layers and tensors.
        reason: String,
    },

    /// The network spec file is unreadable or invalid.
    #[error("spec {path}: {reason}")]
    Spec {
        /// The spec file.
        path: PathBuf,
        /// What is wrong, with the line where the parser knows it.
        reason: String,
    },

    /// The checkpoint has no dense or convolution weights at all.
    #[error("{path}: no dense or convolution weight tensors found")]
    NoLayers {
        /// The checkpoint.
        path: PathBuf,
    },

    /// The GPU engine was asked for and cannot run.
    #[error("GPU engine unavailable: {0}")]
    GpuUnavailable(String),

    /// A GPU operation failed after the device was set up.
    #[error("GPU error: {0}")]
    Gpu(String),

    /// A scan directory cannot be used as asked: another process writes
    /// it, its journal or manifest is damaged or unreadable, or what it
    /// holds does not fit the scan, resume or merge asked for (the reason
    /// says what differs and what to do).
    #[error("{path}: {reason}")]
    ScanDir {
        /// The directory (or the file in it) concerned.
        path: PathBuf,
        /// What is wrong, and how to go on.
        reason: String,
    },

    /// A study cannot run as asked (a column that is not in the scan's
    /// tables, a table that cannot be read).
    #[error("{path}: {reason}")]
    Study {
        /// The table concerned.
        path: PathBuf,
        /// What is wrong, with what there is instead.
        reason: String,
    },

    /// A scan was stopped before it finished (Ctrl-C in Python): what was
    /// measured is kept in the directory's journal, no table was published.
    #[error("{path}: interrupted; the checkpoints finished so far are kept: scan again with resume to measure only the rest")]
    Interrupted {
        /// The scan directory.
        path: PathBuf,
    },

    /// Writing results failed.
    #[error("writing {path}: {reason}")]
    Output {
        /// The output file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

impl Error {
    /// An [`Error::Output`] about `path`.
    pub fn output(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        Error::Output { path: path.to_path_buf(), reason: reason.to_string() }
    }

    /// The tensor this error concerns, if any (for the `tensor` column of
    /// `errors.csv`).
    pub fn tensor(&self) -> Option<&str> {
        match self {
            Error::UnsupportedDtype { tensor, .. } | Error::MissingTensor { tensor, .. } => Some(tensor),
            _ => None,
        }
    }

    /// The file or directory this error concerns, if any.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Error::Io { path, .. }
            | Error::Changed { path }
            | Error::Malformed { path, .. }
            | Error::UnknownFormat { path, .. }
            | Error::Torch { path, .. }
            | Error::Numpy { path, .. }
            | Error::Flax { path, .. }
            | Error::Orbax { path, .. }
            | Error::TensorFlow { path, .. }
            | Error::Keras { path, .. }
            | Error::FlatZoo { path, .. }
            | Error::BadIndex { path, .. }
            | Error::UnsupportedDtype { path, .. }
            | Error::MissingTensor { path, .. }
            | Error::Graph { path, .. }
            | Error::Spec { path, .. }
            | Error::NoLayers { path }
            | Error::ScanDir { path, .. }
            | Error::Study { path, .. }
            | Error::Interrupted { path }
            | Error::Output { path, .. } => Some(path),
            Error::GpuUnavailable(_) | Error::Gpu(_) => None,
        }
    }

    /// A short machine-readable class for the `kind` column of `errors.csv`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Changed { .. } => "changed",
            Error::Malformed { .. } => "malformed",
            Error::UnknownFormat { .. } => "unknown_format",
            Error::Torch { .. } => "torch",
            Error::Numpy { .. } => "numpy",
            Error::Flax { .. } => "flax",
            Error::Orbax { .. } => "orbax",
            Error::TensorFlow { .. } => "tensorflow",
            Error::Keras { .. } => "keras",
            Error::FlatZoo { .. } => "flat_zoo",
            Error::BadIndex { .. } => "bad_index",
            Error::UnsupportedDtype { .. } => "unsupported_dtype",
            Error::MissingTensor { .. } => "missing_tensor",
            Error::Graph { .. } => "graph",
            Error::Spec { .. } => "spec",
            Error::NoLayers { .. } => "no_layers",
            Error::GpuUnavailable(_) => "gpu_unavailable",
            Error::Gpu(_) => "gpu",
            Error::ScanDir { .. } => "scan_dir",
            Error::Study { .. } => "study",
            Error::Interrupted { .. } => "interrupted",
            Error::Output { .. } => "output",
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The crate's one error type. Every variant's message says what went wrong and what to do.

use std::fmt;

/// An error from the engine, worded for the person who has to act on it.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// wgpu found no adapter on any enabled backend.
    NoAdapter,
    /// `SIAMESE_ADAPTER` (or an explicit request) named no adapter that exists.
    AdapterNotFound {
        requested: String,
        available: Vec<String>,
    },
    /// The adapter refused to create a device.
    DeviceRequest(String),
    /// A launcher was given tensors whose shapes or dtypes do not fit the op.
    Shape { op: &'static str, detail: String },
    /// A buffer would exceed one of the device's limits.
    TooLarge {
        what: String,
        bytes: u64,
        limit: u64,
        limit_name: &'static str,
    },
    /// A shader failed to compile or a pipeline failed validation (a bug in the crate).
    Pipeline {
        shader: &'static str,
        entry: &'static str,
        message: String,
    },
    /// Reading a buffer back from the device failed.
    Readback(String),
    /// A dataset file is missing, corrupt or inconsistent; the message names the file.
    Data(String),
    /// A file could not be read or written; the message names it and says why.
    File(String),
    /// A configuration value (a tower spec, a hyperparameter) is invalid; the message says
    /// which and what is accepted.
    Config(String),
    /// Training cannot go on (e.g. it was stopped, or its loss is no longer finite); the
    /// message says why.
    Training(String),
}

impl Error {
    /// A failure to write `what` (a file or directory, named as the user knows it).
    pub fn writing(what: impl std::fmt::Display, e: std::io::Error) -> Error {
        Error::File(format!("cannot write {what}: {e}"))
    }
}

/// Result with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoAdapter => write!(
                f,
                "no GPU adapter found (Vulkan, Metal or DX12). On a machine without a GPU, \
                 install Mesa's software Vulkan driver lavapipe: `apt-get install mesa-vulkan-drivers` \
                 (Debian/Ubuntu). If a GPU is present, install its Vulkan driver and check `vulkaninfo --summary`."
            ),
            Error::AdapterNotFound {
                requested,
                available,
            } => write!(
                f,
                "no adapter's name contains {requested:?} (from SIAMESE_ADAPTER); available: {}. \
                 Set SIAMESE_ADAPTER to part of one of these names, or unset it to choose automatically.",
                if available.is_empty() {
                    "none".to_string()
                } else {
                    available.join(", ")
                }
            ),
            Error::DeviceRequest(msg) => write!(
                f,
                "the adapter refused to create a device: {msg}. Try another adapter with \
                 SIAMESE_ADAPTER=<name substring>, or update the GPU driver."
            ),
            Error::Shape { op, detail } => write!(f, "{op}: {detail}"),
            Error::TooLarge {
                what,
                bytes,
                limit,
                limit_name,
            } => write!(
                f,
                "{what} needs {bytes} bytes, over this device's {limit_name} of {limit} bytes; \
                 use a smaller batch or split the data"
            ),
            Error::Pipeline {
                shader,
                entry,
                message,
            } => {
                write!(
                    f,
                    "shader {shader}.wgsl, entry point {entry}, failed to build: {message}"
                )
            }
            Error::Readback(msg) => write!(f, "reading a result back from the GPU failed: {msg}"),
            Error::Data(msg) | Error::File(msg) | Error::Config(msg) | Error::Training(msg) => {
                write!(f, "{msg}")
            }
        }
    }
}

impl std::error::Error for Error {}

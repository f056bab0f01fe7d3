//! The one error of every reader and writer of files (weights, datasets, arrays): a file that
//! could not be read or written, or whose bytes are not what its format says.

use std::path::Path;

/// A file that could not be read or written, or is damaged or of another format.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read or written.
    #[error("{path}: {err}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        err: std::io::Error,
    },
    /// The file is not in the format expected, or is damaged.
    #[error("{path}: {what}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
}

/// The bytes of the file at `path`.
pub fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|err| FileError::Io { path: path.display().to_string(), err })
}

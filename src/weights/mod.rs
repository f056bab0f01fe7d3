//! Weights: the state dict, its keys, and the files it lives in.
//!
//! - [`StateDict`]: torchvision `state_dict` keys (`features.0.weight`, `classifier.6.bias`) to tensors.
//! - [`keys`]: which key belongs to which tensor of a [`crate::Vgg`], and the paper's names for them.
//! - [`pth`] (zip and legacy, read through the data-only [`pickle`] reader) and [`safetensors`] files.
//! - [`registry`]: torchvision's published weights by name, downloaded once into a cache.

pub mod caffe;
pub mod import;
pub mod infer;
pub mod init;
pub mod keras;
pub mod keras3;
pub mod keys;
pub mod pickle;
pub mod pth;
pub mod registry;
pub mod safetensors;
pub mod source;

use std::collections::BTreeMap;
use std::path::Path;

pub use crate::file::FileError;
pub use keys::{KeyStyle, LoadReport, Strict};

/// Element type of a stored tensor (values are held as f32 in memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// float32
    F32,
    /// float64
    F64,
    /// float16
    F16,
    /// bfloat16
    BF16,
    /// int64
    I64,
    /// int32
    I32,
    /// int16
    I16,
    /// int8
    I8,
    /// uint8
    U8,
    /// bool
    Bool,
}

impl Dtype {
    /// The short lower-case name (`f32`, `bf16`, `i64`, `bool`).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
            Dtype::F16 => "f16",
            Dtype::BF16 => "bf16",
            Dtype::I64 => "i64",
            Dtype::I32 => "i32",
            Dtype::I16 => "i16",
            Dtype::I8 => "i8",
            Dtype::U8 => "u8",
            Dtype::Bool => "bool",
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The precisions weights are written in: `f32`, `f16` or `bf16`.
impl std::str::FromStr for Dtype {
    type Err = crate::parse::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Dtype::F32),
            "f16" => Ok(Dtype::F16),
            "bf16" => Ok(Dtype::BF16),
            _ => Err(crate::parse::ParseError::new("dtype", s, "f32, f16 or bf16")),
        }
    }
}

impl Dtype {
    /// Bytes per element on disk.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }
}

/// One tensor of a state dict: its shape, the type it was stored in, and its values as f32.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// Shape, row-major.
    pub shape: Vec<usize>,
    /// The type it had on disk.
    pub dtype: Dtype,
    /// Values, row-major.
    pub data: Vec<f32>,
}

impl TensorEntry {
    /// A float32 tensor.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self { shape, dtype: Dtype::F32, data }
    }

    /// Decodes little-endian bytes of `dtype`.
    pub fn from_le_bytes(dtype: Dtype, shape: Vec<usize>, b: &[u8]) -> Result<Self, String> {
        let numel: usize = shape.iter().product();
        if b.len() != numel * dtype.size() {
            return Err(format!(
                "tensor of shape {shape:?} and type {dtype:?} needs {} bytes, found {}",
                numel * dtype.size(),
                b.len()
            ));
        }
        let data: Vec<f32> = match dtype {
            Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            Dtype::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            Dtype::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect(),
            Dtype::BF16 => {
                b.chunks_exact(2).map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect()
            }
            Dtype::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            Dtype::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            Dtype::I16 => b.chunks_exact(2).map(|c| i16::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            Dtype::I8 => b.iter().map(|&x| x as i8 as f32).collect(),
            Dtype::U8 | Dtype::Bool => b.iter().map(|&x| x as f32).collect(),
        };
        Ok(Self { shape, dtype, data })
    }

    /// Encodes the values as little-endian bytes of `dtype`.
    pub fn to_le_bytes(&self, dtype: Dtype) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() * dtype.size());
        for &v in &self.data {
            match dtype {
                Dtype::F32 => out.extend_from_slice(&v.to_le_bytes()),
                Dtype::F64 => out.extend_from_slice(&(v as f64).to_le_bytes()),
                Dtype::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                Dtype::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                Dtype::I64 => out.extend_from_slice(&(v as i64).to_le_bytes()),
                Dtype::I32 => out.extend_from_slice(&(v as i32).to_le_bytes()),
                Dtype::I16 => out.extend_from_slice(&(v as i16).to_le_bytes()),
                Dtype::I8 => out.push(v as i8 as u8),
                Dtype::U8 | Dtype::Bool => out.push(v as u8),
            }
        }
        out
    }
}

/// Tensors by key, in key order.
pub type StateDict = BTreeMap<String, TensorEntry>;

/// Why weights could not be read, matched or fetched.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be read or written, or is damaged or of another format.
    #[error(transparent)]
    File(#[from] FileError),
    /// The model needs a key the weights lack.
    #[error("missing key '{key}' (expected shape {expected:?}) in the weights for {arch}; {hint}")]
    MissingKey {
        /// The key.
        key: String,
        /// Its shape in the model.
        expected: Vec<usize>,
        /// The architecture.
        arch: String,
        /// A hint about what the file holds.
        hint: String,
    },
    /// The weights hold keys the model does not have.
    #[error("unexpected keys in the weights for {arch}: {keys} (load non-strictly to ignore them)")]
    UnexpectedKeys {
        /// The architecture.
        arch: String,
        /// The keys, comma-separated.
        keys: String,
    },
    /// A tensor of the wrong shape.
    #[error("shape mismatch for '{key}': the model has {expected:?}, the weights have {found:?}")]
    ShapeMismatch {
        /// The key.
        key: String,
        /// Shape in the model.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A weights name that is not in the registry.
    #[error("unknown weights '{0}' (known: {known})", known = registry::names().join(", "))]
    UnknownName(String),
    /// A download that failed.
    #[error(
        "could not download {url}: {what}.\nWithout a network, fetch that URL elsewhere and put the file at {dest}"
    )]
    Download {
        /// The URL.
        url: String,
        /// Where the file belongs.
        dest: String,
        /// What went wrong.
        what: String,
    },
    /// A file whose hash does not match its published one.
    #[error("{path}: sha256 starts with {got}, expected {expected}: the file is damaged or not the published one")]
    Checksum {
        /// The file.
        path: String,
        /// Expected hash prefix.
        expected: String,
        /// Actual hash prefix.
        got: String,
    },
}

/// Reads a weights file of any supported format, recognised by its content: PyTorch zip `.pth`,
/// PyTorch legacy `.pth`, or safetensors. Training checkpoints are unwrapped (`state_dict`,
/// `model`) and DataParallel's `module.` prefix is removed.
pub fn load_file(path: &Path) -> Result<StateDict, WeightsError> {
    let p = path.display().to_string();
    let bytes = crate::file::read(path)?;
    load_bytes(&bytes, &p)
}

/// [`load_file`] on bytes already in memory; `name` is used in messages.
pub fn load_bytes(bytes: &[u8], name: &str) -> Result<StateDict, WeightsError> {
    if safetensors::looks_like(bytes) {
        return Ok(safetensors::read(bytes, name)?.0);
    }
    pth::read(bytes, name)
}

/// Whether a checkpoint key holds optimizer state rather than model weights (PyTorch's names:
/// `momentum_buffer.*`, `exp_avg.*`, `exp_avg_sq.*`, and this project's `adam_step`).
pub fn is_optimizer_key(k: &str) -> bool {
    ["momentum_buffer.", "exp_avg.", "exp_avg_sq.", "swa_average."].iter().any(|p| k.starts_with(p)) || k == "adam_step"
}

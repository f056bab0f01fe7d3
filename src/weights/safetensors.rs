//! safetensors files with torchvision keys, carrying the architecture in their metadata so that
//! later commands need no `--arch`.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};

use super::{Dtype, StateDict, TensorEntry, WeightsError};
use crate::config::VggConfig;
use crate::file::FileError;
use crate::image::Preprocess;

/// The metadata key holding the [`VggConfig`] as JSON.
pub const CONFIG_KEY: &str = "vgg.config";
/// The metadata key holding the [`Preprocess`] the weights expect, as JSON.
pub const PREPROCESS_KEY: &str = "vgg.preprocess";

/// Whether `bytes` look like safetensors: an 8-byte header length, then a JSON object.
pub fn looks_like(bytes: &[u8]) -> bool {
    if bytes.len() < 10 {
        return false;
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    bytes[8] == b'{' && n < (1 << 30)
}

fn to_dtype(d: StDtype) -> Option<Dtype> {
    Some(match d {
        StDtype::F32 => Dtype::F32,
        StDtype::F64 => Dtype::F64,
        StDtype::F16 => Dtype::F16,
        StDtype::BF16 => Dtype::BF16,
        StDtype::I64 => Dtype::I64,
        StDtype::I32 => Dtype::I32,
        StDtype::I16 => Dtype::I16,
        StDtype::I8 => Dtype::I8,
        StDtype::U8 => Dtype::U8,
        StDtype::BOOL => Dtype::Bool,
        _ => return None,
    })
}

fn from_dtype(d: Dtype) -> StDtype {
    match d {
        Dtype::F32 => StDtype::F32,
        Dtype::F64 => StDtype::F64,
        Dtype::F16 => StDtype::F16,
        Dtype::BF16 => StDtype::BF16,
        Dtype::I64 => StDtype::I64,
        Dtype::I32 => StDtype::I32,
        Dtype::I16 => StDtype::I16,
        Dtype::I8 => StDtype::I8,
        Dtype::U8 => StDtype::U8,
        Dtype::Bool => StDtype::BOOL,
    }
}

/// Reads the tensors and what the metadata records (architecture, preprocessing, other entries).
pub fn read(bytes: &[u8], path: &str) -> Result<(StateDict, Meta), WeightsError> {
    let fmt = |what: String| WeightsError::File(FileError::Format { path: path.to_string(), what });
    let st = SafeTensors::deserialize(bytes).map_err(|e| fmt(format!("not a valid safetensors file: {e}")))?;
    let mut sd = StateDict::new();
    for (name, view) in st.tensors() {
        let dtype =
            to_dtype(view.dtype()).ok_or_else(|| fmt(format!("'{name}' has unsupported type {:?}", view.dtype())))?;
        let entry = TensorEntry::from_le_bytes(dtype, view.shape().to_vec(), view.data()).map_err(&fmt)?;
        sd.insert(name.strip_prefix("module.").unwrap_or(&name).to_string(), entry);
    }
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| fmt(format!("bad safetensors header: {e}")))?;
    let mut meta = Meta::default();
    let parse = |key: &str, json: &str| format!("metadata '{key}' is not valid: {json}");
    for (key, value) in header.metadata().iter().flatten() {
        match key.as_str() {
            CONFIG_KEY => meta.config = Some(serde_json::from_str(value).map_err(|e| fmt(parse(key, &e.to_string())))?),
            PREPROCESS_KEY => {
                meta.preprocess = Some(serde_json::from_str(value).map_err(|e| fmt(parse(key, &e.to_string())))?)
            }
            "format" => {}
            _ => meta.extra.push((key.clone(), value.clone())),
        }
    }
    meta.extra.sort();
    Ok((sd, meta))
}

/// A JSON metadata entry of a safetensors file, if present.
pub fn read_meta<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    path: &str,
    key: &str,
) -> Result<Option<T>, WeightsError> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| {
        WeightsError::File(FileError::Format { path: path.to_string(), what: format!("bad safetensors header: {e}") })
    })?;
    let Some(json) = meta.metadata().as_ref().and_then(|m| m.get(key)) else { return Ok(None) };
    serde_json::from_str(json).map(Some).map_err(|e| {
        WeightsError::File(FileError::Format {
            path: path.to_string(),
            what: format!("metadata '{key}' is not valid: {e}"),
        })
    })
}

/// What a file records besides its tensors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    /// The architecture.
    pub config: Option<VggConfig>,
    /// The preprocessing the weights expect.
    pub preprocess: Option<Preprocess>,
    /// Free-form entries (e.g. the source image of a feature file).
    pub extra: Vec<(String, String)>,
}

/// Serialises a state dict; floating tensors are stored as `float_dtype`, integers keep theirs.
pub fn to_bytes(sd: &StateDict, m: &Meta, float_dtype: Dtype) -> Result<Vec<u8>, WeightsError> {
    let encoded: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = sd
        .iter()
        .map(|(k, t)| {
            let d = match t.dtype {
                Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16 => float_dtype,
                other => other,
            };
            (k.clone(), d, t.shape.clone(), t.to_le_bytes(d))
        })
        .collect();
    let views = encoded
        .iter()
        .map(|(k, d, s, b)| TensorView::new(from_dtype(*d), s.clone(), b).map(|v| (k.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WeightsError::File(FileError::Format { path: "<memory>".into(), what: e.to_string() }))?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    if let Some(c) = &m.config {
        meta.insert(CONFIG_KEY.to_string(), serde_json::to_string(c).expect("config serialises"));
    }
    if let Some(p) = &m.preprocess {
        meta.insert(PREPROCESS_KEY.to_string(), serde_json::to_string(p).expect("preprocess serialises"));
    }
    meta.extend(m.extra.iter().cloned());
    safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| WeightsError::File(FileError::Format { path: "<memory>".into(), what: e.to_string() }))
}

/// Writes a state dict atomically (temporary file, then rename), so that an interrupted write
/// never leaves a half file under the final name.
pub fn write(path: &Path, sd: &StateDict, meta: &Meta, float_dtype: Dtype) -> Result<(), WeightsError> {
    let bytes = to_bytes(sd, meta, float_dtype)?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WeightsError> {
    let io = |err| WeightsError::File(FileError::Io { path: path.display().to_string(), err });
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}-{n}.partial", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

//! PyTorch `.pth` files: the zip format (PyTorch ≥ 1.6) and the legacy format (a sequence of
//! pickles followed by raw storages) that torchvision's own `vgg16-397923af.pth` uses.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use super::pickle::{self, TensorRef, Value};
use super::{Dtype, StateDict, TensorEntry, WeightsError};
use crate::file::FileError;

/// torch's legacy magic number, pickled first in every legacy file.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Reads a `.pth` file's bytes into a flat state dict, unwrapping training checkpoints.
pub fn read(bytes: &[u8], path: &str) -> Result<StateDict, WeightsError> {
    read_noting(bytes, path).map(|(sd, _)| sd)
}

/// [`read`], also saying what was done beyond reading a state dict (a whole pickled module's tree
/// walked for its tensors).
pub fn read_noting(bytes: &[u8], path: &str) -> Result<(StateDict, Vec<String>), WeightsError> {
    let (root, storages) =
        if bytes.starts_with(b"PK\x03\x04") { read_zip(bytes, path)? } else { read_legacy(bytes, path)? };
    let mut notes = vec![];
    let tensors: Vec<(String, &TensorRef)> = match find_state_dict(&root) {
        Some(dict) => dict
            .iter()
            .filter_map(|(k, v)| match (k.as_str(), v) {
                (Some(key), Value::Tensor(t)) => Some((key.to_string(), t)),
                _ => None,
            })
            .collect(),
        None => {
            let (class, tensors) = find_module(&root).ok_or_else(|| {
                WeightsError::File(FileError::Format {
                    path: path.to_string(),
                    what: "no tensors found (expected a state dict, a checkpoint holding one under 'state_dict' or \
                           'model', or a whole pickled nn.Module)"
                        .into(),
                })
            })?;
            notes.push(format!(
                "{path} is a whole pickled module ({class}, as torch.save(model) writes it): its parameters and \
                 buffers were read from the pickled module tree as data, without executing anything (torch.load \
                 needs weights_only=False for such files, which runs the pickle's code)"
            ));
            tensors
        }
    };
    let mut sd = StateDict::default();
    for (key, t) in tensors {
        let tensor = materialise(t, &storages, &key, path)?;
        sd.insert(strip_prefix(&key), tensor);
    }
    Ok((sd, notes))
}

/// The state an `nn.Module` was pickled with (its `__dict__`, given by `BUILD`), if `v` is one.
fn module_state(v: &Value) -> Option<&Vec<(Value, Value)>> {
    let Value::Object { state: Some(state), .. } = v else { return None };
    let Value::Dict(d) = state.as_ref() else { return None };
    d.iter().any(|(k, _)| matches!(k.as_str(), Some("_modules" | "_parameters"))).then_some(d)
}

/// A module's class as `module.Class` (pickled by `NEWOBJ` on the class, or by
/// `copyreg._reconstructor(class, object, None)`).
fn class_name(v: &Value) -> String {
    let Value::Object { callable, args, .. } = v else { return "?".into() };
    let class = match (callable.as_ref(), args.as_ref()) {
        (Value::Global(m, n), Value::Tuple(a)) if m == "copyreg" && n == "_reconstructor" => a.first(),
        (c, _) => Some(c),
    };
    match class {
        Some(Value::Global(m, n)) => format!("{m}.{n}"),
        _ => "?".into(),
    }
}

/// A whole pickled module in what was saved: the root, or a checkpoint's `model` (or `net`,
/// `module`, `state_dict`, `model_state_dict`) entry. Its class and its tensors under
/// `state_dict()`'s keys and order: each module's parameters, then its persistent buffers, then
/// its children's, depth first.
fn find_module(root: &Value) -> Option<(String, Vec<(String, &TensorRef)>)> {
    let module = if module_state(root).is_some() {
        root
    } else {
        let Value::Dict(d) = root else { return None };
        ["model", "net", "module", "state_dict", "model_state_dict"]
            .iter()
            .find_map(|name| d.iter().find(|(k, v)| k.as_str() == Some(name) && module_state(v).is_some()))
            .map(|(_, v)| v)?
    };
    let mut out = vec![];
    walk_module(module, "", &mut out);
    (!out.is_empty()).then(|| (class_name(module), out))
}

fn walk_module<'a>(module: &'a Value, prefix: &str, out: &mut Vec<(String, &'a TensorRef)>) {
    let Some(state) = module_state(module) else { return };
    let field = |name: &str| state.iter().find(|(k, _)| k.as_str() == Some(name)).map(|(_, v)| v);
    let transient: Vec<&str> = match field("_non_persistent_buffers_set") {
        Some(Value::List(names)) => names.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    for kind in ["_parameters", "_buffers"] {
        if let Some(Value::Dict(items)) = field(kind) {
            for (name, value) in items {
                if let (Some(name), Value::Tensor(t)) = (name.as_str(), value)
                    && !(kind == "_buffers" && transient.contains(&name))
                {
                    out.push((format!("{prefix}{name}"), t));
                }
            }
        }
    }
    if let Some(Value::Dict(children)) = field("_modules") {
        for (name, child) in children {
            if let Some(name) = name.as_str() {
                walk_module(child, &format!("{prefix}{name}."), out);
            }
        }
    }
}

/// DataParallel and DistributedDataParallel save keys as `module.features.0.weight`.
fn strip_prefix(key: &str) -> String {
    key.strip_prefix("module.").unwrap_or(key).to_string()
}

/// The state dict inside what was saved: the root itself if it holds tensors, else the first of
/// `state_dict`, `model`, `model_state_dict`, `net` that does.
fn find_state_dict(root: &Value) -> Option<&Vec<(Value, Value)>> {
    let Value::Dict(d) = root else { return None };
    if d.iter().any(|(_, v)| matches!(v, Value::Tensor(_))) {
        return Some(d);
    }
    for name in ["state_dict", "model", "model_state_dict", "net", "module"] {
        if let Some((_, v)) = d.iter().find(|(k, _)| k.as_str() == Some(name))
            && let Some(inner) = find_state_dict(v)
        {
            return Some(inner);
        }
    }
    None
}

fn read_zip(bytes: &[u8], path: &str) -> Result<(Value, HashMap<String, Vec<u8>>), WeightsError> {
    let fmt = |what: String| WeightsError::File(FileError::Format { path: path.to_string(), what });
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| fmt(format!("bad zip archive: {e}")))?;
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    let pkl = names
        .iter()
        .find(|n| n.ends_with("/data.pkl") || n.as_str() == "data.pkl")
        .ok_or_else(|| fmt("zip archive without data.pkl: not a PyTorch file".into()))?
        .clone();
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    if let Some(bo) = names.iter().find(|n| n.ends_with("byteorder")) {
        let mut s = String::new();
        zip.by_name(bo).map_err(|e| fmt(e.to_string()))?.read_to_string(&mut s).ok();
        if s.trim() == "big" {
            return Err(fmt("big-endian PyTorch files are not supported".into()));
        }
    }
    let mut data = Vec::new();
    zip.by_name(&pkl)
        .map_err(|e| fmt(e.to_string()))?
        .read_to_end(&mut data)
        .map_err(|e| fmt(format!("reading data.pkl: {e}")))?;
    let (root, _) = pickle::read(&data, 0).map_err(|e| fmt(e.to_string()))?;
    let mut storages = HashMap::new();
    let data_prefix = format!("{prefix}data/");
    for name in &names {
        if let Some(key) = name.strip_prefix(&data_prefix) {
            let mut buf = Vec::new();
            zip.by_name(name)
                .map_err(|e| fmt(e.to_string()))?
                .read_to_end(&mut buf)
                .map_err(|e| fmt(format!("reading {name}: {e} (truncated file?)")))?;
            storages.insert(key.to_string(), buf);
        }
    }
    Ok((root, storages))
}

fn read_legacy(bytes: &[u8], path: &str) -> Result<(Value, HashMap<String, Vec<u8>>), WeightsError> {
    let fmt = |what: String| WeightsError::File(FileError::Format { path: path.to_string(), what });
    let pk = |pos| pickle::read(bytes, pos).map_err(|e| fmt(e.to_string()));
    let (magic, pos) =
        pk(0).map_err(|_| fmt("not a PyTorch file (neither zip nor legacy pickle), nor safetensors".into()))?;
    if magic != Value::BigInt(LEGACY_MAGIC.to_vec()) {
        return Err(fmt("a pickle, but not a PyTorch legacy file (wrong magic number)".into()));
    }
    let (protocol, pos) = pk(pos)?;
    if protocol != Value::Int(1001) {
        return Err(fmt(format!("unsupported legacy protocol {protocol:?}")));
    }
    let (_sys_info, pos) = pk(pos)?;
    let (root, pos) = pk(pos)?;
    let (keys, mut pos) = pk(pos)?;
    let Value::List(keys) = keys else { return Err(fmt("storage key list missing".into())) };
    // Element sizes of each storage, from the references in the object.
    let mut dtypes: HashMap<String, Dtype> = HashMap::new();
    collect_storages(&root, &mut dtypes);
    let mut storages = HashMap::new();
    for key in keys {
        let key = match key {
            Value::Str(s) => s,
            Value::Int(i) => i.to_string(),
            _ => return Err(fmt("storage key is not a string".into())),
        };
        let dtype = *dtypes.get(&key).ok_or_else(|| fmt(format!("storage {key} is not referenced")))?;
        // Each storage is preceded by its own 8-byte element count.
        let header =
            bytes.get(pos..pos + 8).ok_or_else(|| fmt(format!("file ends before storage {key} (truncated file?)")))?;
        let numel = u64::from_le_bytes(header.try_into().unwrap()) as usize;
        pos += 8;
        let len = numel.checked_mul(dtype.size()).ok_or_else(|| fmt("storage size overflows".into()))?;
        let data = bytes
            .get(pos..pos + len)
            .ok_or_else(|| fmt(format!("file ends inside storage {key} (truncated file?)")))?;
        storages.insert(key, data.to_vec());
        pos += len;
    }
    Ok((root, storages))
}

fn collect_storages(v: &Value, out: &mut HashMap<String, Dtype>) {
    match v {
        Value::Tensor(t) => {
            out.insert(t.storage.key.clone(), t.storage.dtype);
        }
        Value::Storage(s) => {
            out.insert(s.key.clone(), s.dtype);
        }
        Value::List(l) | Value::Tuple(l) => l.iter().for_each(|x| collect_storages(x, out)),
        Value::Dict(d) => d.iter().for_each(|(_, x)| collect_storages(x, out)),
        Value::Object { args, state, .. } => {
            collect_storages(args, out);
            if let Some(s) = state {
                collect_storages(s, out);
            }
        }
        _ => {}
    }
}

/// Gathers a (possibly strided) tensor out of its storage into a contiguous buffer.
fn materialise(
    t: &TensorRef,
    storages: &HashMap<String, Vec<u8>>,
    key: &str,
    path: &str,
) -> Result<TensorEntry, WeightsError> {
    let fmt = |what: String| WeightsError::File(FileError::Format { path: path.to_string(), what });
    let raw = storages
        .get(&t.storage.key)
        .ok_or_else(|| fmt(format!("data of '{key}' (storage {}) is missing (truncated file?)", t.storage.key)))?;
    let es = t.storage.dtype.size();
    let avail = raw.len() / es;
    let numel: usize = t.shape.iter().product();
    let base = t.storage.view_offset + t.offset;
    // The furthest element any index reaches.
    let reach = base + t.shape.iter().zip(&t.stride).map(|(&n, &s)| n.saturating_sub(1) * s).sum::<usize>();
    if numel > 0 && reach >= avail {
        return Err(fmt(format!(
            "'{key}' of shape {:?} reaches element {reach} of a storage holding {avail} (truncated file?)",
            t.shape
        )));
    }
    let mut out = Vec::with_capacity(numel * es);
    let mut idx = vec![0usize; t.shape.len()];
    for _ in 0..numel {
        let off = base + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&raw[off * es..(off + 1) * es]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    TensorEntry::from_le_bytes(t.storage.dtype, t.shape.clone(), &out).map_err(fmt)
}

/// Writes a state dict as a PyTorch zip checkpoint (`torch.save(state_dict)` of PyTorch ≥ 1.6):
/// `archive/data.pkl` (a pickle, protocol 2, of a dict of
/// `torch._utils._rebuild_tensor_v2` calls on persistent storages), one stored (uncompressed)
/// entry per storage under `archive/data/`, 64-byte aligned as torch writes them, `version` and
/// `byteorder`. Floating tensors are stored as `float_dtype`; integer ones keep their type.
pub fn write(sd: &StateDict, float_dtype: Dtype) -> Result<Vec<u8>, WeightsError> {
    use std::io::Write;
    let mut pk = Pickler::default();
    pk.bytes(&[0x80, 2]); // PROTO 2
    pk.bytes(b"}("); // EMPTY_DICT (as torch pickles a state dict), MARK
    let mut storages = Vec::with_capacity(sd.len());
    for (i, (key, t)) in sd.iter().enumerate() {
        let dtype = match t.dtype {
            Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16 => float_dtype,
            d => d,
        };
        let class = match dtype {
            Dtype::F32 => "FloatStorage",
            Dtype::F64 => "DoubleStorage",
            Dtype::F16 => "HalfStorage",
            Dtype::BF16 => "BFloat16Storage",
            Dtype::I64 => "LongStorage",
            Dtype::I32 => "IntStorage",
            Dtype::I16 => "ShortStorage",
            Dtype::I8 => "CharStorage",
            Dtype::U8 => "ByteStorage",
            Dtype::Bool => "BoolStorage",
        };
        pk.unicode(key);
        pk.global("torch._utils", "_rebuild_tensor_v2");
        pk.bytes(b"("); // MARK of the arguments
        pk.bytes(b"("); // MARK of the persistent id
        pk.unicode("storage");
        pk.global("torch", class);
        pk.unicode(&i.to_string());
        pk.unicode("cpu");
        pk.int(t.data.len() as i64);
        pk.bytes(b"tQ"); // TUPLE, BINPERSID
        pk.int(0); // storage offset
        pk.tuple(&t.shape);
        let mut stride = vec![1usize; t.shape.len()];
        for d in (0..t.shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * t.shape[d + 1];
        }
        pk.tuple(&stride);
        pk.bytes(&[0x89]); // NEWFALSE: requires_grad
        pk.global("collections", "OrderedDict");
        pk.bytes(b")R"); // backward hooks
        pk.bytes(b"tR"); // TUPLE of the arguments, REDUCE
        storages.push(t.to_le_bytes(dtype));
    }
    pk.bytes(b"u."); // SETITEMS, STOP
    let fmt = |e: zip::result::ZipError| {
        WeightsError::File(FileError::Format { path: "(writing .pth)".into(), what: e.to_string() })
    };
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).with_alignment(64);
    let mut put = |name: String, data: &[u8]| -> Result<(), WeightsError> {
        zip.start_file(name, opts).map_err(fmt)?;
        zip.write_all(data).map_err(|e| WeightsError::File(FileError::Io { path: "(writing .pth)".into(), err: e }))
    };
    put("archive/data.pkl".into(), &pk.out)?;
    put("archive/byteorder".into(), b"little")?;
    for (i, s) in storages.iter().enumerate() {
        put(format!("archive/data/{i}"), s)?;
    }
    put("archive/version".into(), b"3\n")?;
    Ok(zip.finish().map_err(fmt)?.into_inner())
}

/// The few pickle opcodes a state dict needs.
#[derive(Default)]
struct Pickler {
    out: Vec<u8>,
}

impl Pickler {
    fn bytes(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }

    fn unicode(&mut self, s: &str) {
        self.out.push(b'X'); // BINUNICODE
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: i64) {
        if let Ok(v) = i32::try_from(v) {
            self.out.push(b'J'); // BININT
            self.out.extend_from_slice(&v.to_le_bytes());
        } else {
            self.out.extend_from_slice(&[0x8a, 8]); // LONG1, 8 bytes
            self.out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn tuple(&mut self, v: &[usize]) {
        self.out.push(b'(');
        for &x in v {
            self.int(x as i64);
        }
        self.out.push(b't');
    }
}

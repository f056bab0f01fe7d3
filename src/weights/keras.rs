//! Keras HDF5 weights: the layout of `model.save_weights("x.h5")` and of `model.save("x.h5")`
//! (under `model_weights`), which is the layout of the Keras applications' files
//! (`vgg16_weights_tf_dim_ordering_tf_kernels.h5`, `…_notop.h5`, VGG19).
//!
//! Such a file lists its layers in the root attribute `layer_names`; each layer is a group whose
//! attribute `weight_names` lists its tensors, in Keras' order (kernel, bias; gamma, beta, moving
//! mean, moving variance). Keras is channels-last: conv kernels are HWIO (torchvision: OIHW), dense
//! kernels `[in, out]` (torchvision: `[out, in]`), and `Flatten` reads the last map in (h, w, c)
//! order, so the first dense layer's rows are permuted to torchvision's (c, h, w). The layers are
//! matched by their shapes, not their names, against the trunks of the VGG configurations. Keras
//! 3's files ([`super::keras3`]) list their layers differently and then go through the same
//! matching ([`from_layers`]).

use std::collections::HashMap;

use hdf5_pure::{AttrValue, File, FileBuilder};

use super::import::{Dense, Imported, Item, bn_affine, fold_head_affine, place_head, place_trunk};
use super::safetensors::{CONFIG_KEY, PREPROCESS_KEY};
use super::{StateDict, TensorEntry, WeightsError};
use crate::config::{LayerKind, VggConfig};
use crate::file::FileError;
use crate::image::{Normalize, Preprocess};

/// Keras' default BatchNormalization epsilon (PyTorch's and this project's is 1e-5).
const KERAS_BN_EPS: f32 = 1e-3;

/// Whether `bytes` is an HDF5 file (its signature at offset 0) or a Keras 3 `.keras` archive.
pub fn looks_like(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x89HDF\r\n\x1a\n") || super::keras3::looks_like_archive(bytes)
}

/// What a Keras file gave: the tensors under torchvision's keys, plus the configuration when the
/// file was written by this project.
#[derive(Debug)]
pub struct KerasImport {
    /// Tensors, preprocessing (Caffe for Keras' own files) and notes.
    pub imported: Imported,
    /// The architecture recorded by [`write`], if any.
    pub config: Option<VggConfig>,
}

/// A string attribute as text, or a list of them.
pub(super) fn strings(v: &AttrValue) -> Option<Vec<String>> {
    match v {
        AttrValue::StringArray(s) | AttrValue::AsciiStringArray(s) => Some(s.clone()),
        AttrValue::StringArraySized { values, .. } | AttrValue::AsciiStringArraySized { values, .. } => {
            Some(values.clone())
        }
        AttrValue::String(s) | AttrValue::AsciiString(s) => Some(vec![s.clone()]),
        AttrValue::StringSized { value, .. } | AttrValue::AsciiStringSized { value, .. } => Some(vec![value.clone()]),
        AttrValue::VarLenStringArray(s) | AttrValue::VarLenAsciiStringArray(s) => Some(s.clone()),
        AttrValue::VarLenString(s) | AttrValue::VarLenAsciiString(s) => Some(vec![s.clone()]),
        _ => None,
    }
}

/// Keras splits attributes over 64 KiB into `name0`, `name1`, … (`save_attributes_to_hdf5_group`).
fn list_attr(attrs: &HashMap<String, AttrValue>, name: &str) -> Option<Vec<String>> {
    if let Some(v) = attrs.get(name) {
        return strings(v);
    }
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(v) = attrs.get(&format!("{name}{i}")) {
        out.extend(strings(v)?);
        i += 1;
    }
    (i > 0).then_some(out)
}

/// Reads a Keras `.h5` weights or model file (Keras 2's layout, or Keras 3's `.weights.h5`), or a
/// Keras 3 `.keras` archive.
pub fn read(bytes: &[u8], path: &str) -> Result<KerasImport, WeightsError> {
    let bad = |what: String| WeightsError::File(FileError::Format { path: path.to_string(), what });
    if super::keras3::looks_like_archive(bytes) {
        return super::keras3::read_archive(bytes, path);
    }
    let file = File::from_bytes(bytes.to_vec()).map_err(|e| bad(format!("not a readable HDF5 file: {e}")))?;
    if super::keras3::is_keras3(&file) {
        return super::keras3::read_weights(&file, path);
    }
    let root = file.root();
    let root_attrs = root.attrs().map_err(|e| bad(format!("damaged HDF5 root group: {e}")))?;
    let groups = root.groups().map_err(|e| bad(format!("damaged HDF5 root group: {e}")))?;
    // A whole saved model keeps its weights in `model_weights` and its architecture as JSON.
    let (top, attrs) = if groups.iter().any(|g| g == "model_weights") {
        let g = file.group("model_weights").map_err(|e| bad(format!("model_weights: {e}")))?;
        let a = g.attrs().map_err(|e| bad(format!("model_weights: {e}")))?;
        (g, a)
    } else {
        (root, root_attrs.clone())
    };
    let layer_names = list_attr(&attrs, "layer_names")
        .ok_or_else(|| bad("an HDF5 file without Keras' `layer_names` attribute: not a Keras weights file".into()))?;
    let model_config: Option<serde_json::Value> =
        root_attrs.get("model_config").and_then(strings).and_then(|s| serde_json::from_str(&s.concat()).ok());
    let recorded = |key: &str| root_attrs.get(key).and_then(strings).map(|s| s.concat());
    let config: Option<VggConfig> = match recorded(CONFIG_KEY) {
        Some(s) => Some(serde_json::from_str(&s).map_err(|e| bad(format!("bad {CONFIG_KEY} attribute: {e}")))?),
        None => None,
    };
    let preprocess: Option<Preprocess> = match recorded(PREPROCESS_KEY) {
        Some(s) => Some(serde_json::from_str(&s).map_err(|e| bad(format!("bad {PREPROCESS_KEY} attribute: {e}")))?),
        None => None,
    };
    let mut raw = Vec::with_capacity(layer_names.len());
    for layer in &layer_names {
        let g = top.group(layer).map_err(|e| bad(format!("layer '{layer}' is listed but missing: {e}")))?;
        let ga = g.attrs().map_err(|e| bad(format!("layer '{layer}': {e}")))?;
        let names = list_attr(&ga, "weight_names").unwrap_or_default();
        let mut tensors = Vec::new();
        for n in &names {
            let ds = g.dataset(n).map_err(|e| bad(format!("layer '{layer}': weight '{n}' is missing: {e}")))?;
            tensors.push(read_dataset(&ds).map_err(|e| bad(format!("{layer}/{n}: {e}")))?);
        }
        raw.push((layer.clone(), tensors));
    }
    from_layers(raw, model_config.as_ref(), config, preprocess, path)
}

/// A weight dataset's shape and values as f32 (stored as f32 or f64), its count checked against
/// its shape. Keras 2 and 3 files store their variables alike.
pub(super) fn read_dataset(ds: &hdf5_pure::Dataset) -> Result<(Vec<usize>, Vec<f32>), String> {
    let shape: Vec<usize> = ds.shape().map_err(|e| e.to_string())?.iter().map(|&d| d as usize).collect();
    let data = ds
        .read_f32()
        .or_else(|_| ds.read_f64().map(|v| v.into_iter().map(|x| x as f32).collect()))
        .map_err(|e| format!("cannot read as floats: {e}"))?;
    if data.len() != shape.iter().product::<usize>() {
        return Err(format!("{} values for shape {shape:?} (truncated?)", data.len()));
    }
    Ok((shape, data))
}

/// One layer as a file lists it: its name and its tensors in Keras' order and layout.
pub(super) type RawLayer = (String, Vec<(Vec<usize>, Vec<f32>)>);

/// The state dict of a Keras model's layers, in the model's order (weightless layers included: an
/// activation between a dense layer and a BatchNormalization says where the latter sits):
/// convolutions and BatchNorms matched against the trunks, the dense head placed, layouts turned
/// into torchvision's. `model_config` is the model's JSON (BatchNorm epsilons, dense activations),
/// `config` and `preprocess` what this project recorded in its own files.
pub(super) fn from_layers(
    raw: Vec<RawLayer>,
    model_config: Option<&serde_json::Value>,
    config: Option<VggConfig>,
    preprocess: Option<Preprocess>,
    path: &str,
) -> Result<KerasImport, WeightsError> {
    let bad = |what: String| WeightsError::File(FileError::Format { path: path.to_string(), what });
    let ours = config.is_some();
    let mut items = Vec::new();
    let mut gap = false;
    for (layer, tensors) in raw {
        let layer = &layer;
        let (owned, datas): (Vec<Vec<usize>>, Vec<Vec<f32>>) = tensors.into_iter().unzip();
        let shapes: Vec<&[usize]> = owned.iter().map(Vec::as_slice).collect();
        let mut t = datas.into_iter();
        let name = layer.clone();
        let item = match shapes[..] {
            [] => {
                gap = true;
                continue;
            }
            [[kh, kw, ci, co], ref rest @ ..] if rest.is_empty() || rest == [[*co]] => {
                let k = t.next().expect("counted");
                let mut w = vec![0f32; k.len()];
                let (kh, kw, ci, co) = (*kh, *kw, *ci, *co);
                for y in 0..kh {
                    for x in 0..kw {
                        for i in 0..ci {
                            for o in 0..co {
                                w[((o * ci + i) * kh + y) * kw + x] = k[((y * kw + x) * ci + i) * co + o];
                            }
                        }
                    }
                }
                let b = t.next().unwrap_or_else(|| vec![0.0; co]);
                Item::Conv { name, shape: [co, ci, kh, kw], w, b }
            }
            [[c1], [c2], [c3], [c4]] if c1 == c2 && c2 == c3 && c3 == c4 => {
                let (g, b, m, v) = (t.next().unwrap(), t.next().unwrap(), t.next().unwrap(), t.next().unwrap());
                let eps = if ours { 1e-5 } else { bn_epsilon(model_config, layer).unwrap_or(KERAS_BN_EPS) };
                Item::Bn { name, g, b, m, v, eps, gap }
            }
            [[inp, out], ref rest @ ..] if rest.is_empty() || rest == [[*out]] => {
                let (inp, out) = (*inp, *out);
                let k = t.next().expect("counted");
                let mut w = vec![0f32; k.len()];
                for i in 0..inp {
                    for o in 0..out {
                        w[o * inp + i] = k[i * out + o];
                    }
                }
                let b = t.next().unwrap_or_else(|| vec![0.0; out]);
                Item::Dense { name, d: Dense { w, out, inp, b } }
            }
            _ => {
                return Err(bad(format!(
                    "layer '{layer}': weights of shapes {shapes:?} are not a VGG layer's (Conv2D, BatchNormalization or Dense)"
                )));
            }
        };
        items.push(item);
        gap = false;
    }
    let mut notes = vec![];
    let mut sd = StateDict::new();
    let channels = place_trunk(&mut sd, &items).map_err(&bad)?;
    let mut dense: Vec<Dense> = Vec::new();
    let mut pending: Option<(Vec<f32>, Vec<f32>)> = None;
    let mut last_dense = String::new();
    for it in items {
        match it {
            Item::Dense { name, mut d } => {
                if let Some((s, t)) = pending.take() {
                    d.absorb_input(&s, &t);
                }
                dense.push(d);
                last_dense = name;
            }
            Item::Conv { name, .. } if !dense.is_empty() => {
                return Err(bad(format!("layer '{name}': a convolution after the dense layers")));
            }
            Item::Bn { name, g, b, m, v, eps, gap } if !dense.is_empty() => {
                // BatchNorm in the dense head: folded into the dense layer before it when it comes
                // before that layer's ReLU, else into the next one — exact in inference.
                let after_relu = gap || dense_activation(model_config, &last_dense).is_none_or(|a| a != "linear");
                if !gap && dense_activation(model_config, &last_dense).is_none() {
                    notes.push(format!(
                        "'{name}' follows dense layer '{last_dense}' directly: assumed to come after its ReLU (Dense(activation='relu'), as Keras code usually writes it); a whole saved model (model.save) records which"
                    ));
                }
                let (s, t) = bn_affine(&g, &b, &m, &v, eps);
                fold_head_affine(&mut dense, &mut pending, after_relu, s, t)
                    .map_err(|e| bad(format!("layer '{name}': {e}")))?;
                notes.push(format!("'{name}': a BatchNormalization in the dense head, folded into a dense layer"));
            }
            Item::Bn { .. } | Item::Conv { .. } => {}
        }
    }
    if pending.is_some() {
        return Err(bad(
            "a BatchNormalization after the last dense layer's ReLU: no dense layer to fold it into".into()
        ));
    }
    place_head(&mut sd, dense, channels, true, &mut notes).map_err(&bad)?;
    if let Some(cfg) = &config {
        // Our own file: number the head as the recorded configuration does (with dropout, a
        // CIFAR-style head's layers are classifier.0, .3, … rather than .0, .2, …).
        sd = renumber_head(sd, cfg);
    }
    notes.push("Keras layout: conv kernels HWIO → OIHW, dense kernels [in, out] → [out, in]".into());
    let preprocess = preprocess.or_else(|| {
        notes.push(
            "a Keras file: Caffe preprocessing (BGR, 0-255, mean subtracted), as keras.applications.vgg16".into(),
        );
        let mut p = Preprocess::imagenet();
        p.normalize = Normalize::Caffe;
        Some(p)
    });
    Ok(KerasImport { imported: Imported { state_dict: sd, preprocess, notes }, config })
}

/// Re-keys the `classifier.N` tensors, in order, to the Linear layers of `config`'s plan.
fn renumber_head(sd: StateDict, config: &VggConfig) -> StateDict {
    let plan = config.plan([224, 224]);
    let linear: Vec<&str> = plan.layers[plan.trunk..]
        .iter()
        .filter(|l| matches!(l.kind, LayerKind::Linear { .. }))
        .map(|l| l.key.as_str())
        .collect();
    let mut heads: Vec<usize> =
        sd.keys().filter_map(|k| k.strip_prefix("classifier.")?.strip_suffix(".weight")?.parse().ok()).collect();
    heads.sort();
    let to: std::collections::HashMap<String, &str> =
        heads.iter().zip(&linear).map(|(i, key)| (format!("classifier.{i}"), *key)).collect();
    sd.into_iter()
        .map(|(k, t)| match k.rsplit_once('.') {
            Some((layer, leaf)) if to.contains_key(layer) => (format!("{}.{leaf}", to[layer]), t),
            _ => (k, t),
        })
        .collect()
}

/// The activation of the Dense layer `name` in a saved model's JSON configuration.
fn dense_activation(config: Option<&serde_json::Value>, name: &str) -> Option<String> {
    layer_config(config?, name)?.get("activation")?.as_str().map(str::to_string)
}

/// The `config` object of the layer `name` anywhere in a model's JSON configuration.
fn layer_config<'a>(v: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(c) = m.get("config")
                && c.get("name").and_then(|n| n.as_str()) == Some(name)
            {
                return Some(c);
            }
            m.values().find_map(|x| layer_config(x, name))
        }
        serde_json::Value::Array(a) => a.iter().find_map(|x| layer_config(x, name)),
        _ => None,
    }
}

/// The epsilon of the BatchNormalization layer `name` in a saved model's JSON configuration.
fn bn_epsilon(config: Option<&serde_json::Value>, name: &str) -> Option<f32> {
    layer_config(config?, name)?.get("epsilon")?.as_f64().map(|e| e as f32)
}

/// (torchvision key, Keras dataset path) of every tensor written.
pub type KeyMap = Vec<(String, String)>;

/// One dataset of a Keras layer: leaf name (`kernel`), shape, values.
type Weight = (&'static str, Vec<usize>, Vec<f32>);

/// Keras' name of a trunk layer from the paper's: `conv3_2` → `block3_conv2`, `bn3_2` →
/// `block3_bn2`, `pool3` → `block3_pool`.
fn keras_name(paper: &str) -> Option<String> {
    let (kind, rest) = paper.split_at(paper.find(|c: char| c.is_ascii_digit())?);
    match (kind, rest.split_once('_')) {
        ("conv", Some((b, i))) => Some(format!("block{b}_conv{i}")),
        ("bn", Some((b, i))) => Some(format!("block{b}_bn{i}")),
        ("pool", None) => Some(format!("block{rest}_pool")),
        _ => None,
    }
}

/// Writes `sd` (torchvision keys, as [`super::keys::conform`] leaves them) in the layout of
/// `model.save_weights("x.h5")` with the Keras applications' layer names (`block1_conv1` …,
/// `flatten`, `fc1`, `fc2`, `predictions`), loadable by `keras.applications.VGG16(weights=None)
/// .load_weights(path)` for the plain configurations D and E. The architecture and preprocessing
/// are recorded as root attributes, which Keras ignores. BatchNorm layers (`block1_bn1`) keep this
/// project's epsilon, 1e-5: a Keras model reading them must be built with `epsilon=1e-5`.
///
/// Returns the file's bytes and, for each key of `sd` that was written, its Keras path
/// (`block1_conv1/block1_conv1/kernel:0`).
pub fn write(sd: &StateDict, config: &VggConfig, preprocess: &Preprocess) -> Result<(Vec<u8>, KeyMap), WeightsError> {
    let get = |key: &str| -> Result<&TensorEntry, WeightsError> {
        sd.get(key).ok_or_else(|| {
            WeightsError::File(FileError::Format { path: "keras".into(), what: format!("missing key '{key}'") })
        })
    };
    let plan = config.plan([224, 224]);
    let mut b = FileBuilder::new();
    let mut layer_names = vec!["input_1".to_string()];
    let mut mapping = Vec::new();
    // (layer name, [(weight name, shape, data)])
    let mut layers: Vec<(String, Vec<Weight>)> = vec![("input_1".into(), vec![])];
    for l in &plan.layers[..plan.trunk] {
        let Some(name) = keras_name(&l.name) else { continue };
        let weights = match l.kind {
            LayerKind::Conv { in_channels: ci, out_channels: co, kernel: k } => {
                let w = get(&format!("{}.weight", l.key))?;
                let mut hwio = vec![0f32; w.data.len()];
                for o in 0..co {
                    for i in 0..ci {
                        for y in 0..k {
                            for x in 0..k {
                                hwio[((y * k + x) * ci + i) * co + o] = w.data[((o * ci + i) * k + y) * k + x];
                            }
                        }
                    }
                }
                let bias = get(&format!("{}.bias", l.key))?.data.clone();
                for (leaf, keras) in [("weight", "kernel"), ("bias", "bias")] {
                    mapping.push((format!("{}.{leaf}", l.key), format!("{name}/{name}/{keras}:0")));
                }
                vec![("kernel", vec![k, k, ci, co], hwio), ("bias", vec![co], bias)]
            }
            LayerKind::BatchNorm { channels } => {
                let mut v = vec![];
                for (leaf, keras) in [
                    ("weight", "gamma"),
                    ("bias", "beta"),
                    ("running_mean", "moving_mean"),
                    ("running_var", "moving_variance"),
                ] {
                    v.push((keras, vec![channels], get(&format!("{}.{leaf}", l.key))?.data.clone()));
                    mapping.push((format!("{}.{leaf}", l.key), format!("{name}/{name}/{keras}:0")));
                }
                v
            }
            _ => vec![],
        };
        layer_names.push(name.clone());
        layers.push((name, weights));
    }
    // The head: Flatten, then the dense layers in (h, w, c) order for the first.
    let fcs: Vec<&crate::config::Layer> =
        plan.layers[plan.trunk..].iter().filter(|l| matches!(l.kind, LayerKind::Linear { .. })).collect();
    if !fcs.is_empty() {
        layer_names.push("flatten".into());
        layers.push(("flatten".into(), vec![]));
    }
    let channels = config.out_channels();
    for (n, l) in fcs.iter().enumerate() {
        let w = get(&format!("{}.weight", l.key))?;
        let (out, inp) = (w.shape[0], w.shape[1]);
        let hw = if n == 0 { inp / channels } else { 1 };
        let mut io = vec![0f32; w.data.len()];
        for o in 0..out {
            for i in 0..inp {
                // torchvision's row i = (c, p) → Keras' (p, c)
                let (c, p) = (i / hw, i % hw);
                let ki = if hw > 1 { p * channels + c } else { i };
                io[ki * out + o] = w.data[o * inp + i];
            }
        }
        let bias = get(&format!("{}.bias", l.key))?.data.clone();
        let name = if n + 1 == fcs.len() { "predictions".to_string() } else { format!("fc{}", n + 1) };
        for (leaf, keras) in [("weight", "kernel"), ("bias", "bias")] {
            mapping.push((format!("{}.{leaf}", l.key), format!("{name}/{name}/{keras}:0")));
        }
        layer_names.push(name.clone());
        layers.push((name, vec![("kernel", vec![inp, out], io), ("bias", vec![out], bias)]));
    }
    b.set_attr("layer_names", AttrValue::AsciiStringArray(layer_names));
    b.set_attr("backend", AttrValue::AsciiString("tensorflow".into()));
    b.set_attr("keras_version", AttrValue::AsciiString("2.13.1".into()));
    let json = |v: serde_json::Result<String>| {
        v.map_err(|e| WeightsError::File(FileError::Format { path: "keras".into(), what: e.to_string() }))
    };
    b.set_attr(CONFIG_KEY, AttrValue::String(json(serde_json::to_string(config))?));
    b.set_attr(PREPROCESS_KEY, AttrValue::String(json(serde_json::to_string(preprocess))?));
    for (name, weights) in layers {
        let mut g = b.create_group(&name);
        let names: Vec<String> = weights.iter().map(|(w, ..)| format!("{name}/{w}:0")).collect();
        g.set_attr("weight_names", AttrValue::AsciiStringArray(names));
        if !weights.is_empty() {
            // Keras' `g.create_dataset("block1_conv1/kernel:0")` nests a group of the layer's name.
            let mut inner = g.create_group(&name);
            for (w, shape, data) in weights {
                inner
                    .create_dataset(&format!("{w}:0"))
                    .with_f32_data(&data)
                    .with_shape(&shape.iter().map(|&d| d as u64).collect::<Vec<_>>());
            }
            g.add_group(inner.finish());
        }
        b.add_group(g.finish());
    }
    let bytes = b.finish().map_err(|e| {
        WeightsError::File(FileError::Format { path: "keras".into(), what: format!("HDF5 writer: {e}") })
    })?;
    Ok((bytes, mapping))
}

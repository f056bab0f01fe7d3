//! ONNX import: VGG-family graphs as torchvision exports them (`Conv`, `BatchNormalization`, `Relu`,
//! `MaxPool`, `AveragePool`/`GlobalAveragePool`, `Flatten`, `Gemm`) and as tf2onnx exports Keras
//! models (an NHWC input followed by a `Transpose`, a `Transpose` back to NHWC before the flatten —
//! so the first dense layer's rows are in (h, w, c) order — trunk BatchNorms as `Mul` and `Add`,
//! dense layers as `MatMul` with `[in, out]` weights plus `Add`, a final `Softmax`), checked
//! against tf2onnx 1.17, Keras 3's export, torch's TorchScript and dynamo exporters and
//! onnx-simplifier (`tests/onnx_exporters.rs`). Shape arithmetic beside the chain (a flatten's
//! target computed from `Shape`) is set aside ([`data_path`]). The graph is walked as one chain; its tensors are renamed
//! to torchvision's keys and the architecture is recognised from them ([`crate::weights::infer`]). Anything
//! that does not fit is refused with the node that did not.

use std::collections::HashMap;

use super::proto::{Field, bytes_of, fields, int, ints, string, strings};
use crate::file::FileError;
use crate::image::{Normalize, Preprocess};
use crate::weights::import::{Dense, Imported, bn_affine, fold_head_affine, place_head};
use crate::weights::{Dtype, StateDict, TensorEntry, WeightsError, safetensors};

/// Whether `bytes` may be an ONNX model (a `ModelProto` starts with its `ir_version`, field 1).
pub fn looks_like(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x08)
}

/// A tensor's dimensions and values (f32, f64, f16, bf16; int32 and int64 as f32).
fn tensor(b: &[u8]) -> Result<(String, Vec<usize>, Vec<f32>), String> {
    let fs = fields(b).ok_or("damaged TensorProto")?;
    let name = string(&fs, 8);
    let dims: Vec<usize> = ints(&fs, 1).ok_or("damaged dims")?.into_iter().map(|d| d.max(0) as usize).collect();
    let numel = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("tensor '{name}': dims {dims:?} overflow"))?;
    let dtype = int(&fs, 2).unwrap_or(1);
    if fs.iter().any(|(n, _)| *n == 13) {
        return Err(format!("tensor '{name}' is stored in an external file; save the model with its weights inside"));
    }
    let raw = bytes_of(&fs, 9).next();
    let data: Vec<f32> = match (dtype, raw) {
        (1, Some(r)) => r.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        (11, Some(r)) => r.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        (10, Some(r)) => r.chunks_exact(2).map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect(),
        (16, Some(r)) => r.chunks_exact(2).map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect(),
        (7, Some(r)) => r.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        (6, Some(r)) => r.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        (1, None) => {
            let mut v = Vec::new();
            for (n, f) in &fs {
                match (n, f) {
                    (4, Field::Fixed32(x)) => v.push(f32::from_bits(*x)),
                    (4, Field::Bytes(p)) => {
                        v.extend(p.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())))
                    }
                    _ => {}
                }
            }
            v
        }
        (7, None) => ints(&fs, 7).ok_or("damaged int64_data")?.into_iter().map(|x| x as f32).collect(),
        // INT32 values live in int32_data (field 5) as varints.
        (6, None) => ints(&fs, 5).ok_or("damaged int32_data")?.into_iter().map(|x| x as i32 as f32).collect(),
        (t, _) => return Err(format!("tensor '{name}' has ONNX data type {t}, not a float, int32 or int64 type")),
    };
    if data.len() != numel {
        return Err(format!("tensor '{name}' of shape {dims:?} holds {} values", data.len()));
    }
    Ok((name, dims, data))
}

/// One node: operator, name, inputs, outputs and attributes (ints, floats, strings).
#[derive(Clone)]
struct Node {
    op: String,
    name: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    ints: HashMap<String, Vec<i64>>,
    floats: HashMap<String, f32>,
    strings: HashMap<String, String>,
}

impl Node {
    fn parse(b: &[u8]) -> Option<Self> {
        let fs = fields(b)?;
        let mut ints_ = HashMap::new();
        let mut floats = HashMap::new();
        let mut strings_ = HashMap::new();
        for a in bytes_of(&fs, 5) {
            let af = fields(a)?;
            let name = string(&af, 1);
            if let Some(Field::Fixed32(x)) = af.iter().find(|(n, _)| *n == 2).map(|(_, f)| *f) {
                floats.insert(name.clone(), f32::from_bits(x));
            }
            if let Some(i) = int(&af, 3) {
                ints_.insert(name.clone(), vec![i]);
            }
            if let Some(v) = bytes_of(&af, 4).next() {
                strings_.insert(name.clone(), String::from_utf8_lossy(v).into_owned());
            }
            let list = ints(&af, 8)?;
            if !list.is_empty() {
                ints_.insert(name, list);
            }
        }
        Some(Self {
            op: string(&fs, 4),
            name: string(&fs, 3),
            inputs: strings(&fs, 1),
            outputs: strings(&fs, 2),
            ints: ints_,
            floats,
            strings: strings_,
        })
    }

    fn label(&self) -> String {
        if self.name.is_empty() { format!("a {} node", self.op) } else { format!("node '{}' ({})", self.name, self.op) }
    }

    fn attr(&self, k: &str) -> Option<&[i64]> {
        self.ints.get(k).map(Vec::as_slice)
    }
}

// ---------------------------------------------------------------------------------------------

/// Reads an ONNX VGG; `path` names it in errors.
pub fn read(bytes: &[u8], path: &str) -> Result<Imported, WeightsError> {
    let bad = |what: String| WeightsError::File(FileError::Format { path: path.to_string(), what });
    let model = fields(bytes).ok_or_else(|| bad("not an ONNX file (damaged protobuf)".into()))?;
    let graph = bytes_of(&model, 7).next().ok_or_else(|| bad("an ONNX model without a graph".into()))?;
    let mut meta = HashMap::new();
    for m in bytes_of(&model, 14) {
        let f = fields(m).ok_or_else(|| bad("damaged metadata".into()))?;
        meta.insert(string(&f, 1), string(&f, 2));
    }
    let g = fields(graph).ok_or_else(|| bad("damaged graph".into()))?;
    let mut inits: HashMap<String, (Vec<usize>, Vec<f32>)> = HashMap::new();
    for t in bytes_of(&g, 5) {
        let (name, dims, data) = tensor(t).map_err(&bad)?;
        inits.insert(name, (dims, data));
    }
    // Constant nodes carry tensors too (tf2onnx emits some).
    let mut nodes = Vec::new();
    for n in bytes_of(&g, 1) {
        let f = fields(n).ok_or_else(|| bad("damaged node".into()))?;
        if string(&f, 4) == "Constant" {
            for a in bytes_of(&f, 5) {
                let af = fields(a).ok_or_else(|| bad("damaged attribute".into()))?;
                if let Some(t) = bytes_of(&af, 5).next() {
                    let (_, dims, data) = tensor(t).map_err(&bad)?;
                    for out in strings(&f, 2) {
                        inits.insert(out, (dims.clone(), data.clone()));
                    }
                }
            }
            continue;
        }
        nodes.push(Node::parse(n).ok_or_else(|| bad("damaged node".into()))?);
    }
    let input = bytes_of(&g, 11)
        .filter_map(|vi| fields(vi).map(|f| string(&f, 1)))
        .find(|name| !inits.contains_key(name))
        .ok_or_else(|| bad("the graph has no input".into()))?;
    walk(&data_path(nodes, &input), &inits, &input, &meta).map_err(bad)
}

/// The nodes that compute on the image, in graph order. Exporters compute a flatten's target
/// shape at run time (tf2onnx: `Shape → Gather → Cast → Slice → Concat → Cast` into the `Reshape`;
/// torch's exporters: `Shape → Gather → Unsqueeze → Concat`): a `Shape` output is metadata, and
/// so is everything computed only from metadata and constants. Those nodes feed only shape inputs
/// and are left out, whatever the tool and opset, so the rest reads as one chain.
fn data_path(nodes: Vec<Node>, input: &str) -> Vec<Node> {
    let mut data: std::collections::HashSet<String> = [input.to_string()].into();
    nodes
        .into_iter()
        .filter(|n| {
            let on_path = n.op != "Shape" && n.op != "Size" && n.inputs.iter().any(|i| data.contains(i));
            if on_path {
                data.extend(n.outputs.iter().cloned());
            }
            on_path
        })
        .collect()
}

fn walk(
    nodes: &[Node],
    inits: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    input: &str,
    meta: &HashMap<String, String>,
) -> Result<Imported, String> {
    let mut sd = StateDict::new();
    let mut notes = Vec::new();
    let mut cur = input.to_string();
    let mut idx = 0usize; // torchvision's features.N
    let mut channels = 0usize;
    let (mut nhwc_input, mut hwc_flatten, mut flat) = (false, false, false);
    let mut dense: Vec<Dense> = Vec::new();
    let mut softmax = false;
    // Head state: a ReLU since the last dense layer, its bias already added, and an affine map
    // (a BatchNorm after a ReLU) waiting for the next dense layer.
    let (mut relu_since_dense, mut bias_done) = (false, false);
    // The convolution right before, while only per-channel scales and shifts follow it (tf2onnx
    // writes a trunk BatchNorm as Mul and Add): they fold into it.
    let mut last_conv: Option<usize> = None;
    let mut pending: Option<(Vec<f32>, Vec<f32>)> = None;
    let init = |name: &str, n: &Node| -> Result<&(Vec<usize>, Vec<f32>), String> {
        inits.get(name).ok_or_else(|| format!("{}: input '{name}' is not a constant weight", n.label()))
    };
    for n in nodes {
        // An elementwise Add or Mul may take the chain as either operand.
        let swapped;
        let n = if matches!(n.op.as_str(), "Add" | "Mul") && n.inputs.get(1) == Some(&cur) {
            swapped = Node { inputs: vec![cur.clone(), n.inputs[0].clone()], ..n.clone() };
            &swapped
        } else {
            n
        };
        if n.inputs.first() != Some(&cur) {
            return Err(format!("{} does not continue the chain from '{cur}': not a plain VGG graph", n.label()));
        }
        if !matches!(n.op.as_str(), "Mul" | "Add" | "Conv") {
            last_conv = None;
        }
        if softmax {
            return Err(format!("{} follows the final Softmax", n.label()));
        }
        let refuse = |why: &str| Err(format!("{}: {why}", n.label()));
        match n.op.as_str() {
            "Transpose" => {
                let perm = n.attr("perm").unwrap_or(&[]);
                match perm {
                    [0, 3, 1, 2] if idx == 0 && !flat => {
                        nhwc_input = true;
                        notes.push("NHWC input transposed to NCHW: the imported model takes NCHW".into());
                    }
                    [0, 2, 3, 1] if idx > 0 && !flat => hwc_flatten = true,
                    _ => return refuse(&format!("a Transpose with perm {perm:?} where a VGG has none")),
                }
            }
            "Conv" => {
                if flat {
                    return refuse("a convolution after the flatten");
                }
                let (ws, w) = init(&n.inputs.get(1).cloned().unwrap_or_default(), n)?;
                let [co, ci, kh, kw] = ws[..] else { return refuse("weights not of rank 4") };
                let k = kh;
                let pads = n.attr("pads").unwrap_or(&[0, 0, 0, 0]);
                let pad = if k == 3 { 1 } else { 0 };
                // tf2onnx often writes `auto_pad` instead of explicit pads: SAME keeps the size.
                let padded = match n.strings.get("auto_pad").map(String::as_str) {
                    Some("SAME_UPPER" | "SAME_LOWER") => true,
                    Some("VALID") => k == 1,
                    _ => pads.iter().all(|&p| p == pad),
                };
                let ok = kh == kw
                    && (k == 3 || k == 1)
                    && padded
                    && n.attr("strides").unwrap_or(&[1, 1]).iter().all(|&s| s == 1)
                    && n.attr("dilations").unwrap_or(&[1, 1]).iter().all(|&d| d == 1)
                    && n.attr("group").unwrap_or(&[1]) == [1];
                if !ok {
                    return refuse("only 3x3 (padding 1) and 1x1 (padding 0) stride-1 convolutions are VGG's");
                }
                let b = match n.inputs.get(2).filter(|s| !s.is_empty()) {
                    Some(name) => init(name, n)?.1.clone(),
                    None => vec![0.0; co],
                };
                sd.insert(format!("features.{idx}.weight"), TensorEntry::f32(ws.clone(), w.clone()));
                sd.insert(format!("features.{idx}.bias"), TensorEntry::f32(vec![co], b));
                channels = co;
                let _ = ci;
                last_conv = Some(idx);
                idx += 1;
            }
            // A per-channel scale or shift of a convolution's output (a BatchNorm as tf2onnx writes
            // it): folded into that convolution's weights and bias, exactly.
            "Mul" | "Add" if !flat && last_conv.is_some() => {
                let conv = last_conv.expect("checked");
                let (_, v) = init(n.inputs.get(1).map(String::as_str).unwrap_or(""), n)?;
                if v.len() != channels {
                    return refuse(&format!("a per-channel {} of {} values after {channels} channels", n.op, v.len()));
                }
                let bias = sd.get_mut(&format!("features.{conv}.bias")).expect("written with its conv");
                if n.op == "Mul" {
                    bias.data.iter_mut().zip(v).for_each(|(b, s)| *b *= s);
                    let w = sd.get_mut(&format!("features.{conv}.weight")).expect("written with its conv");
                    let per_out = w.data.len() / channels;
                    w.data.chunks_exact_mut(per_out).zip(v).for_each(|(row, s)| row.iter_mut().for_each(|x| *x *= s));
                } else {
                    bias.data.iter_mut().zip(v).for_each(|(b, t)| *b += t);
                }
                if !notes.iter().any(|m: &String| m.starts_with("per-channel")) {
                    notes.push(
                        "per-channel Mul/Add after convolutions (a BatchNorm as tf2onnx writes it) folded into the convolutions"
                            .into(),
                    );
                }
            }
            "BatchNormalization" if flat => {
                // BatchNorm1d in the head: folded into the dense layer before it (or after it,
                // when it follows the ReLU) — exact in inference.
                let get = |i: usize| init(n.inputs.get(i).map(String::as_str).unwrap_or(""), n).map(|t| t.1.clone());
                let eps = n.floats.get("epsilon").copied().unwrap_or(1e-5);
                let (s, t) = bn_affine(&get(1)?, &get(2)?, &get(3)?, &get(4)?, eps);
                fold_head_affine(&mut dense, &mut pending, relu_since_dense, s, t)
                    .map_err(|e| format!("{}: {e}", n.label()))?;
                notes.push(format!("{}: a BatchNorm in the dense head, folded into a dense layer", n.label()));
            }
            "BatchNormalization" => {
                let get = |i: usize| init(n.inputs.get(i).map(String::as_str).unwrap_or(""), n).map(|t| t.1.clone());
                let (g, b, m, mut v) = (get(1)?, get(2)?, get(3)?, get(4)?);
                // The engine's epsilon is PyTorch's 1e-5; another (Keras: 1e-3) moves into the variance.
                let eps = n.floats.get("epsilon").copied().unwrap_or(1e-5);
                v.iter_mut().for_each(|x| *x += eps - 1e-5);
                let c = g.len();
                for (leaf, data) in [("weight", g), ("bias", b), ("running_mean", m), ("running_var", v)] {
                    sd.insert(format!("features.{idx}.{leaf}"), TensorEntry::f32(vec![c], data));
                }
                sd.insert(
                    format!("features.{idx}.num_batches_tracked"),
                    TensorEntry { shape: vec![], dtype: Dtype::I64, data: vec![0.0] },
                );
                idx += 1;
            }
            "Relu" => {
                if !flat {
                    idx += 1;
                }
                relu_since_dense = true;
            }
            "MaxPool" => {
                let ok = n.attr("kernel_shape") == Some(&[2, 2][..])
                    && n.attr("strides") == Some(&[2, 2][..])
                    && n.attr("pads").unwrap_or(&[0, 0, 0, 0]).iter().all(|&p| p == 0);
                if !ok || flat {
                    return refuse("VGG's max-pools are 2x2 with stride 2");
                }
                idx += 1;
            }
            "LRN" => idx += 1,
            // The head's pooling: torchvision's adaptive pool (identity at 224², an AveragePool
            // where the map divides evenly) or the CIFAR head's global average.
            "AveragePool" | "GlobalAveragePool" if !flat => {}
            "Flatten" | "Reshape" => flat = true,
            "Dropout" | "Identity" => {}
            // A cast to float32 of what already is.
            "Cast" if n.attr("to") == Some(&[1][..]) => {}
            "Gemm" | "MatMul" => {
                if !flat {
                    return refuse("a dense layer before the flatten");
                }
                let (ws, w) = init(&n.inputs.get(1).cloned().unwrap_or_default(), n)?;
                let [r, c] = ws[..] else { return refuse("weights not of rank 2") };
                let trans_b = n.op == "Gemm" && n.attr("transB") == Some(&[1][..]);
                if n.attr("transA").unwrap_or(&[0]) != [0] {
                    return refuse("transA is not VGG's");
                }
                if n.floats.get("alpha").is_some_and(|&a| a != 1.0) || n.floats.get("beta").is_some_and(|&b| b != 1.0) {
                    return refuse("alpha and beta other than 1");
                }
                // To PyTorch's [out, in].
                let (out, inp, wt) = if trans_b {
                    (r, c, w.clone())
                } else {
                    let mut t = vec![0f32; r * c];
                    for i in 0..r {
                        for o in 0..c {
                            t[o * r + i] = w[i * c + o];
                        }
                    }
                    (c, r, t)
                };
                let b = match n.inputs.get(2).filter(|s| !s.is_empty()) {
                    Some(name) if n.op == "Gemm" => init(name, n)?.1.clone(),
                    _ => vec![0.0; out],
                };
                let mut d = Dense { w: wt, out, inp, b };
                if let Some((s, t)) = pending.take() {
                    if s.len() != inp {
                        return refuse("a BatchNorm of another width than this layer's input");
                    }
                    d.absorb_input(&s, &t);
                }
                dense.push(d);
                relu_since_dense = false;
                bias_done = n.op == "Gemm" && n.inputs.get(2).is_some_and(|b| !b.is_empty());
            }
            // A MatMul's bias, or the shift of a BatchNorm that tf2onnx split into Mul and Add.
            "Add" if flat && !dense.is_empty() => {
                let (_, b) = init(n.inputs.get(1).map(String::as_str).unwrap_or(""), n)?;
                let width = dense.last().expect("checked").out;
                if b.len() != width {
                    return refuse("an Add of another width than its dense layer");
                }
                if !bias_done && !relu_since_dense {
                    let d = dense.last_mut().expect("checked");
                    d.b.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    bias_done = true;
                } else {
                    fold_head_affine(&mut dense, &mut pending, relu_since_dense, vec![1.0; width], b.clone())
                        .map_err(|e| format!("{}: {e}", n.label()))?;
                }
            }
            "Mul" if flat && !dense.is_empty() => {
                let (_, s) = init(n.inputs.get(1).map(String::as_str).unwrap_or(""), n)?;
                let width = dense.last().expect("checked").out;
                if s.len() != width {
                    return refuse("a Mul of another width than its dense layer");
                }
                fold_head_affine(&mut dense, &mut pending, relu_since_dense, s.clone(), vec![0.0; width])
                    .map_err(|e| format!("{}: {e}", n.label()))?;
                bias_done = true;
                notes.push(format!(
                    "{}: a per-feature scale in the dense head (a BatchNorm as tf2onnx writes it), folded into a dense layer",
                    n.label()
                ));
            }
            "Softmax" if flat => {
                softmax = true;
                notes.push("the final Softmax is dropped: the model outputs logits (classify applies it)".into());
            }
            other => return refuse(&format!("{other} is not part of a VGG graph")),
        }
        cur = n.outputs.first().cloned().unwrap_or_default();
    }
    if idx == 0 {
        return Err("no convolutions: not a VGG graph".into());
    }
    if pending.is_some() {
        return Err("a BatchNorm after the last dense layer's ReLU: no dense layer to fold it into".into());
    }
    place_head(&mut sd, dense, channels, hwc_flatten, &mut notes)?;
    let preprocess = match meta.get(safetensors::PREPROCESS_KEY) {
        Some(p) => Some(serde_json::from_str(p).map_err(|e| format!("bad {}: {e}", safetensors::PREPROCESS_KEY))?),
        None if nhwc_input => {
            notes.push("an NHWC graph (Keras): Caffe preprocessing assumed (BGR, 0-255, mean subtracted)".into());
            let mut p = Preprocess::imagenet();
            p.normalize = Normalize::Caffe;
            Some(p)
        }
        None => None,
    };
    Ok(Imported { state_dict: sd, preprocess, notes })
}

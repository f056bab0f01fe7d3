//! Caffe `.caffemodel` files: the paper's own released weights (`VGG_ILSVRC_16_layers.caffemodel`,
//! `VGG_ILSVRC_19_layers.caffemodel`, written in the V1 `layers` format) and the V2 `layer` format.
//!
//! A caffemodel is a protocol-buffer `NetParameter`: its layers (V1: field 2, `V1LayerParameter`
//! with the type as an enum; V2: field 100, `LayerParameter` with the type as a string) carry their
//! weights as `BlobProto`s, shaped by a `BlobShape` or by the legacy num/channels/height/width.
//! Caffe's convolution weights are OIHW and its inner products `[out, in]` over a (c, h, w)
//! flatten, as torchvision's; the first convolution reads BGR planes in 0-255 with the mean pixel
//! subtracted, which is Caffe preprocessing ([`Normalize::Caffe`]). Layers are matched by their
//! shapes against the VGG trunks, as for Keras files ([`super::import::place_trunk`]).

use super::import::{Dense, Imported, Item, place_head, place_trunk};
use super::{StateDict, WeightsError};
use crate::file::FileError;
use crate::image::{Normalize, Preprocess};
use crate::onnx::proto::{Field, bytes_of, fields, int, ints, string};

/// V1LayerParameter.LayerType values that carry or shape VGG weights.
const V1_CONVOLUTION: i64 = 4;
const V1_INNER_PRODUCT: i64 = 14;

/// Whether `bytes` parse as a `NetParameter` with layers (V1 or V2).
pub fn looks_like(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(0x0a | 0x12 | 0xa2))
        && fields(bytes).is_some_and(|fs| fs.iter().any(|(n, f)| matches!((n, f), (2 | 100, Field::Bytes(_)))))
}

/// One layer: name, kind (`Convolution`, `InnerProduct`, …), blobs as (shape, values).
type Layer = (String, String, Vec<(Vec<usize>, Vec<f32>)>);

/// Reads a caffemodel's bytes; `path` names it in errors.
pub fn read(bytes: &[u8], path: &str) -> Result<Imported, WeightsError> {
    let bad = |what: String| WeightsError::File(FileError::Format { path: path.to_string(), what });
    let net = fields(bytes).ok_or_else(|| bad("not a caffemodel (damaged protocol buffer)".into()))?;
    let mut layers: Vec<Layer> = Vec::new();
    let v1 = bytes_of(&net, 2).count();
    for l in bytes_of(&net, 2) {
        let f = fields(l).ok_or_else(|| bad("damaged V1 layer".into()))?;
        let kind = match int(&f, 5) {
            Some(V1_CONVOLUTION) => "Convolution",
            Some(V1_INNER_PRODUCT) => "InnerProduct",
            _ => "",
        };
        layers.push((string(&f, 4), kind.into(), blobs(&f, 6).map_err(&bad)?));
    }
    for l in bytes_of(&net, 100) {
        let f = fields(l).ok_or_else(|| bad("damaged layer".into()))?;
        layers.push((string(&f, 1), string(&f, 2), blobs(&f, 7).map_err(&bad)?));
    }
    if layers.is_empty() {
        return Err(bad("a caffemodel without layers".into()));
    }
    let mut items = Vec::new();
    for (name, kind, mut b) in layers {
        if b.is_empty() {
            continue;
        }
        let layer = |what: &str| bad(format!("layer '{name}' ({kind}): {what}"));
        match kind.as_str() {
            "Convolution" => {
                let (shape, w) = b.remove(0);
                let [o, i, kh, kw] = shape[..] else {
                    return Err(layer(&format!("weights of shape {shape:?}, not [out, in, kh, kw]")));
                };
                let bias = bias_of(b, o).map_err(|e| layer(&e))?;
                items.push(Item::Conv { name, shape: [o, i, kh, kw], w, b: bias });
            }
            "InnerProduct" => {
                let (shape, w) = b.remove(0);
                let [out, inp] = squeeze(&shape)[..] else {
                    return Err(layer(&format!("weights of shape {shape:?}, not [out, in]")));
                };
                let bias = bias_of(b, out).map_err(|e| layer(&e))?;
                items.push(Item::Dense { name, d: Dense { w, out, inp, b: bias } });
            }
            other => {
                return Err(layer(&format!("{other} layers with weights are not VGG's (Convolution, InnerProduct)")));
            }
        }
    }
    let mut sd = StateDict::new();
    let channels = place_trunk(&mut sd, &items).map_err(&bad)?;
    let mut dense = Vec::new();
    for it in items {
        match it {
            Item::Dense { d, .. } => dense.push(d),
            Item::Conv { name, .. } if !dense.is_empty() => {
                return Err(bad(format!("layer '{name}': a convolution after the inner products")));
            }
            _ => {}
        }
    }
    let mut notes = vec![format!(
        "a Caffe model ({} format): Caffe preprocessing (BGR, 0-255, mean pixel subtracted), as the paper's released weights expect",
        if v1 > 0 { "V1 `layers`" } else { "V2 `layer`" }
    )];
    place_head(&mut sd, dense, channels, false, &mut notes).map_err(&bad)?;
    let mut preprocess = Preprocess::imagenet();
    preprocess.normalize = Normalize::Caffe;
    Ok(Imported { state_dict: sd, preprocess: Some(preprocess), notes })
}

/// A blob: its shape and values.
type Blob = (Vec<usize>, Vec<f32>);

/// The blobs of a layer message (field `num`).
fn blobs(layer: &[(u32, Field<'_>)], num: u32) -> Result<Vec<Blob>, String> {
    bytes_of(layer, num).map(blob).collect()
}

/// One `BlobProto`: its shape (`shape.dim`, or the legacy num/channels/height/width) and its values (`data`, packed or not, or `double_data`), whose count is
/// checked against the shape.
fn blob(b: &[u8]) -> Result<(Vec<usize>, Vec<f32>), String> {
    let f = fields(b).ok_or("damaged blob")?;
    let shape: Vec<usize> = match bytes_of(&f, 7).next() {
        Some(s) => {
            let sf = fields(s).ok_or("damaged blob shape")?;
            ints(&sf, 1).ok_or("damaged blob shape")?.into_iter().map(|d| d.max(0) as usize).collect()
        }
        // Caffe pads vectors and matrices with leading ones: (1, 1, out, in), (1, 1, 1, out).
        None => (1..=4).map(|n| int(&f, n).unwrap_or(1).max(0) as usize).collect(),
    };
    let mut data = Vec::new();
    for (n, v) in &f {
        match (n, v) {
            (5, Field::Bytes(p)) => {
                data.extend(p.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            }
            (5, Field::Fixed32(x)) => data.push(f32::from_bits(*x)),
            (8, Field::Bytes(p)) => data.extend(
                p.chunks_exact(8).map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32),
            ),
            _ => {}
        }
    }
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("blob dims overflow")?;
    if data.len() != numel {
        return Err(format!("a blob of shape {shape:?} holds {} values (truncated?)", data.len()));
    }
    Ok((shape, data))
}

/// A matrix's two dimensions, without Caffe's leading ones.
fn squeeze(shape: &[usize]) -> Vec<usize> {
    let first = shape.iter().position(|&d| d != 1).unwrap_or(shape.len().saturating_sub(1));
    shape[first.min(shape.len().saturating_sub(2))..].to_vec()
}

/// The bias blob (any shape with `out` values), or zeros without one.
fn bias_of(rest: Vec<(Vec<usize>, Vec<f32>)>, out: usize) -> Result<Vec<f32>, String> {
    match rest.into_iter().next() {
        Some((_, b)) if b.len() == out => Ok(b),
        Some((shape, _)) => Err(format!("a bias of shape {shape:?} for {out} outputs")),
        None => Ok(vec![0.0; out]),
    }
}

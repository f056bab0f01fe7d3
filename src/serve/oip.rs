//! The Open Inference Protocol (KServe v2, Triton's HTTP API) on the wire: inference requests as
//! JSON or with Triton's binary tensor extension, their tensors read into values, and responses
//! written back the way the request asked (JSON `data`, or binary after an
//! `Inference-Header-Content-Length` JSON header), with Triton's classification extension.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The header that says how long the JSON part of a binary request or response is.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A request the server cannot take: answered with 400 and `{"error": ...}`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

fn bad(what: impl Into<String>) -> BadRequest {
    BadRequest(what.into())
}

/// `POST /v2/models/{name}/infer`'s body.
#[derive(Debug, Clone, Deserialize)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// `binary_data_output` asks for every output in binary.
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// The tensors.
    pub inputs: Vec<RequestInput>,
    /// The outputs wanted (all when empty).
    #[serde(default)]
    pub outputs: Vec<RequestOutput>,
}

/// One input tensor.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestInput {
    /// `input` (FP32 images) or `image` (encoded files).
    pub name: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// `FP32` or `BYTES`.
    pub datatype: String,
    /// `binary_data_size` when its values follow the JSON header.
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// Its values in JSON (nested or flat), when not binary.
    #[serde(default)]
    pub data: Option<Value>,
}

/// One output wanted.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestOutput {
    /// `logits` or `probabilities`.
    pub name: String,
    /// `binary_data` and `classification` (the top k as `value:index:label`).
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

/// A tensor's values as the request carried them.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// `FP32`.
    F32(Vec<f32>),
    /// `BYTES`: one byte string per element.
    Bytes(Vec<Vec<u8>>),
}

/// A request's input, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Its name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values.
    pub values: Values,
}

/// Splits a body into the request and its inputs' values: `header_length` is the value of
/// [`HEADER_LENGTH`] (binary tensor extension), `None` for a JSON-only body.
pub fn read_request(body: &[u8], header_length: Option<usize>) -> Result<(InferRequest, Vec<Tensor>), BadRequest> {
    let (json, mut binary) = match header_length {
        Some(n) if n > body.len() => {
            return Err(bad(format!("{HEADER_LENGTH} is {n}, but the body has only {} bytes", body.len())));
        }
        Some(n) => (&body[..n], &body[n..]),
        None => (body, &body[body.len()..]),
    };
    let request: InferRequest =
        serde_json::from_slice(json).map_err(|e| bad(format!("the request is not an inference request: {e}")))?;
    let mut tensors = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        let shape: Vec<usize> = input
            .shape
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| bad(format!("input '{}' has a negative dimension", input.name))))
            .collect::<Result<_, _>>()?;
        let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("shape too large"))?;
        let values = match input.parameters.get("binary_data_size") {
            Some(size) => {
                let size = size.as_u64().ok_or_else(|| bad("binary_data_size must be a byte count"))? as usize;
                if size > binary.len() {
                    return Err(bad(format!(
                        "input '{}' declares {size} bytes of binary data, but only {} follow the header",
                        input.name,
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                binary_values(&input.datatype, mine, count, &input.name)?
            }
            None => {
                let data = input.data.as_ref().ok_or_else(|| bad(format!("input '{}' has no data", input.name)))?;
                json_values(&input.datatype, data, count, &input.name)?
            }
        };
        tensors.push(Tensor { name: input.name.clone(), shape, values });
    }
    if !binary.is_empty() {
        return Err(bad(format!("{} bytes of binary data follow the inputs", binary.len())));
    }
    Ok((request, tensors))
}

fn binary_values(datatype: &str, b: &[u8], count: usize, name: &str) -> Result<Values, BadRequest> {
    match datatype {
        "FP32" => {
            if b.len() != count * 4 {
                return Err(bad(format!("input '{name}': {} bytes of FP32 for {count} values", b.len())));
            }
            Ok(Values::F32(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
        }
        "BYTES" => {
            // Each element: a 4-byte little-endian length, then that many bytes.
            let (mut out, mut rest) = (Vec::with_capacity(count), b);
            while !rest.is_empty() {
                let (len, tail) = rest.split_at_checked(4).ok_or_else(|| bad(format!("input '{name}': truncated")))?;
                let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                let (item, tail) =
                    tail.split_at_checked(len).ok_or_else(|| bad(format!("input '{name}': truncated")))?;
                out.push(item.to_vec());
                rest = tail;
            }
            if out.len() != count {
                return Err(bad(format!("input '{name}': {} elements for a shape of {count}", out.len())));
            }
            Ok(Values::Bytes(out))
        }
        other => Err(bad(format!("input '{name}' has datatype {other}; FP32 or BYTES expected"))),
    }
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn json_values(datatype: &str, data: &Value, count: usize, name: &str) -> Result<Values, BadRequest> {
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    if flat.len() != count {
        return Err(bad(format!("input '{name}': {} values for a shape of {count}", flat.len())));
    }
    match datatype {
        "FP32" => flat
            .iter()
            .map(|v| v.as_f64().map(|x| x as f32).ok_or_else(|| bad(format!("input '{name}': {v} is not a number"))))
            .collect::<Result<_, _>>()
            .map(Values::F32),
        // Encoded images in JSON travel as base64 text (JSON strings cannot hold bytes).
        "BYTES" => flat
            .iter()
            .map(|v| {
                let text = v.as_str().ok_or_else(|| bad(format!("input '{name}': BYTES elements are strings")))?;
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| bad(format!("input '{name}': not base64 ({e}); send images as base64 or binary")))
            })
            .collect::<Result<_, _>>()
            .map(Values::Bytes),
        other => Err(bad(format!("input '{name}' has datatype {other}; FP32 or BYTES expected"))),
    }
}

/// One output of a response.
#[derive(Debug, Clone, Serialize)]
pub struct ResponseOutput {
    /// Its name.
    pub name: String,
    /// `FP32` or `BYTES`.
    pub datatype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// `binary_data_size` when binary.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub parameters: Map<String, Value>,
    /// Its values when in JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// A response's JSON part.
#[derive(Debug, Clone, Serialize)]
pub struct InferResponse {
    /// The model.
    pub model_name: String,
    /// Its version.
    pub model_version: String,
    /// The request's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The outputs.
    pub outputs: Vec<ResponseOutput>,
}

/// An output's values before encoding.
pub enum OutputValues {
    /// `FP32`.
    F32(Vec<f32>),
    /// `BYTES` (classification strings).
    Strings(Vec<String>),
}

/// Builds the response body: JSON, or the JSON header followed by the binary outputs (then
/// `Some(header length)`, for [`HEADER_LENGTH`]).
pub fn write_response(
    mut response: InferResponse,
    values: Vec<(OutputValues, bool)>,
) -> Result<(Vec<u8>, Option<usize>), serde_json::Error> {
    let mut binary = Vec::new();
    for (out, (vals, as_binary)) in response.outputs.iter_mut().zip(values) {
        if as_binary {
            let start = binary.len();
            match vals {
                OutputValues::F32(v) => v.iter().for_each(|x| binary.extend_from_slice(&x.to_le_bytes())),
                OutputValues::Strings(v) => v.iter().for_each(|s| {
                    binary.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    binary.extend_from_slice(s.as_bytes());
                }),
            }
            out.parameters.insert("binary_data_size".into(), Value::from(binary.len() - start));
        } else {
            out.data = Some(match vals {
                OutputValues::F32(v) => Value::from(v),
                OutputValues::Strings(v) => Value::from(v),
            });
        }
    }
    let mut body = serde_json::to_vec(&response)?;
    if binary.is_empty() {
        return Ok((body, None));
    }
    let header = body.len();
    body.extend_from_slice(&binary);
    Ok((body, Some(header)))
}

/// Whether `params` asks for something: a boolean `true` (or a non-zero number).
pub fn flag(params: &Map<String, Value>, key: &str) -> bool {
    params.get(key).is_some_and(|v| v.as_bool().unwrap_or_else(|| v.as_u64().is_some_and(|n| n > 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_inputs_follow_the_json_header_and_truncation_is_refused() {
        let header =
            br#"{"inputs":[{"name":"image","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":11}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&[3, 0, 0, 0, b'a', b'b', b'c', 0, 0, 0, 0]);
        let (_, t) = read_request(&body, Some(header.len())).unwrap();
        assert_eq!(t[0].values, Values::Bytes(vec![b"abc".to_vec(), vec![]]));
        assert!(read_request(&body[..body.len() - 1], Some(header.len())).unwrap_err().0.contains("declares 11"));
        assert!(read_request(&body, Some(body.len() + 1)).is_err());
    }

    #[test]
    fn json_tensors_may_be_nested_and_must_fill_their_shape() {
        let body = br#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","data":[[1.5,2]]}]}"#;
        let (_, t) = read_request(body, None).unwrap();
        assert_eq!(t[0].values, Values::F32(vec![1.5, 2.0]));
        let short = br#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2]}]}"#;
        assert!(read_request(short, None).unwrap_err().0.contains("2 values for a shape of 3"));
        let neg = br#"{"inputs":[{"name":"input","shape":[-1,3],"datatype":"FP32","data":[1,2,3]}]}"#;
        assert!(read_request(neg, None).is_err());
    }

    #[test]
    fn responses_put_binary_outputs_after_the_header() {
        let response = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: None,
            outputs: vec![ResponseOutput {
                name: "logits".into(),
                datatype: "FP32".into(),
                shape: vec![1, 2],
                parameters: Map::new(),
                data: None,
            }],
        };
        let (body, header) = write_response(response, vec![(OutputValues::F32(vec![1.0, -2.0]), true)]).unwrap();
        let header = header.unwrap();
        let json: Value = serde_json::from_slice(&body[..header]).unwrap();
        assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(&body[header..header + 4], &1f32.to_le_bytes());
    }
}

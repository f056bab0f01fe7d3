//! The endpoints: the Open Inference Protocol's health, metadata, inference and (Triton's)
//! statistics; `POST /predictions/{name}` for an image file from `curl`; `/metrics`; the web page.
//! Every error is a 4xx or 5xx with `{"error": "..."}`; nothing a request sends can fail another.

// Handlers return their error answers as ready responses, as axum's own extractors do.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::batcher::{Done, Job, SubmitError, Work};
use super::oip::{self, BadRequest, InferResponse, OutputValues, ResponseOutput, Tensor, Values};
use super::stats::RequestTimes;
use super::{Served, Server, access, page};
use crate::classify::{Prediction, Scored, softmax_rows, top_k_rows};

/// A JSON error body with `status`.
pub fn error(status: StatusCode, what: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": what.to_string() }))).into_response()
}

/// The routes, guarded and logged.
pub fn router(server: Arc<Server>) -> Router {
    let mut app = Router::new()
        .route("/", get(page::index))
        .route("/examples/{file}", get(page::example))
        .route("/v2/health/live", get(|| async { axum::Json(json!({"live": true})) }))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata_v))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_ready_v))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_v))
        .route("/v2/models/{name}/stats", get(model_stats))
        .route("/v2/models/{name}/versions/{version}/stats", get(model_stats_v))
        .route("/predictions/{name}", post(predictions))
        .route("/explain/{name}", post(page::explain))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        // Bodies are read with the server's own limit (a JSON 413), not axum's default.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(server.clone(), access::require_key))
        .layer(middleware::from_fn_with_state(server.clone(), access::log));
    if let Some(origin) = &server.options.cors_origin
        && let Ok(origin) = origin.parse::<HeaderValue>()
    {
        app = app.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origin)
                .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
        );
    }
    app.with_state(server)
}

type Shared = State<Arc<Server>>;

fn find<'a>(server: &'a Server, name: &str) -> Result<&'a Served, Response> {
    server.model(name).ok_or_else(|| {
        let known: Vec<&str> = server.models.iter().map(|m| m.name.as_str()).collect();
        error(StatusCode::NOT_FOUND, format!("no model '{name}' (served: {})", known.join(", ")))
    })
}

fn version_ok(version: &str) -> Result<(), Response> {
    if version == "1" { Ok(()) } else { Err(error(StatusCode::NOT_FOUND, format!("no version '{version}' (only 1)"))) }
}

async fn ready(State(s): Shared) -> Response {
    let ready = s.ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({ "ready": ready }))).into_response()
}

async fn server_metadata() -> Response {
    axum::Json(json!({
        "name": "vgg",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "classification", "statistics"],
    }))
    .into_response()
}

fn metadata(m: &Served) -> Value {
    let c = m.config.in_channels as i64;
    let k = m.config.num_classes as i64;
    json!({
        "name": m.name,
        "versions": ["1"],
        "platform": "vgg",
        // Any size from 32x32 up is accepted; `input_size` is what the preprocessing produces.
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [-1, c, -1, -1]},
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [-1, k]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, k]},
        ],
        "parameters": {
            "architecture": m.config.to_string(),
            "runs_on": m.runs_on,
            "input_size": m.input_size(),
            "max_batch_size": m.batcher.options().max_batch_size,
            "labels": m.labels.len(),
        },
    })
}

async fn model_metadata(State(s): Shared, Path(name): Path<String>) -> Response {
    match find(&s, &name) {
        Ok(m) => axum::Json(metadata(m)).into_response(),
        Err(r) => r,
    }
}

async fn model_metadata_v(state: Shared, Path((name, version)): Path<(String, String)>) -> Response {
    match version_ok(&version) {
        Ok(()) => model_metadata(state, Path(name)).await,
        Err(r) => r,
    }
}

async fn model_ready(State(s): Shared, Path(name): Path<String>) -> Response {
    match find(&s, &name) {
        Ok(m) => {
            let ready = m.batcher.ready();
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            (status, axum::Json(json!({"name": m.name, "ready": ready}))).into_response()
        }
        Err(r) => r,
    }
}

async fn model_ready_v(state: Shared, Path((name, version)): Path<(String, String)>) -> Response {
    match version_ok(&version) {
        Ok(()) => model_ready(state, Path(name)).await,
        Err(r) => r,
    }
}

fn stats_of(m: &Served) -> Value {
    m.stats.lock().map(|s| s.to_json(&m.name)).unwrap_or(Value::Null)
}

async fn model_stats(State(s): Shared, Path(name): Path<String>) -> Response {
    match find(&s, &name) {
        Ok(m) => axum::Json(json!({ "model_stats": [stats_of(m)] })).into_response(),
        Err(r) => r,
    }
}

async fn model_stats_v(state: Shared, Path((name, version)): Path<(String, String)>) -> Response {
    match version_ok(&version) {
        Ok(()) => model_stats(state, Path(name)).await,
        Err(r) => r,
    }
}

async fn all_stats(State(s): Shared) -> Response {
    axum::Json(json!({ "model_stats": s.models.iter().map(stats_of).collect::<Vec<_>>() })).into_response()
}

async fn metrics(State(s): Shared) -> Response {
    let depths: Vec<(String, usize)> = s.models.iter().map(|m| (m.name.clone(), m.batcher.queue_depth())).collect();
    let body = s.metrics.render(&depths);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

/// The body, or a 413 past the limit: at once when its declared length is over it (nothing is
/// read), else as soon as what arrives is.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    let too_large = || error(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is over {limit} bytes"));
    if axum::body::HttpBody::size_hint(&body).lower() > limit as u64 {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|_| too_large())
}

/// Images as the network takes them: one `[n, c, h, w]` group per job.
pub type Groups = Vec<(Vec<f32>, [usize; 4])>;

/// Decodes and preprocesses encoded images exactly as `vgg classify` does, on a blocking thread.
pub async fn preprocess_images(m: &Served, files: Vec<Vec<u8>>) -> Result<Groups, Response> {
    let pre = m.preprocess.clone();
    let config = m.config.clone();
    let work = tokio::task::spawn_blocking(move || -> Result<Groups, String> {
        files
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let img = crate::image::decode(bytes, &format!("image {i}")).map_err(|e| e.to_string())?;
                let t = pre.apply(&img).map_err(|e| e.to_string())?;
                let [c, h, w] = t.shape;
                config.check_input([1, c, h, w]).map_err(|e| format!("image {i}: {e}"))?;
                Ok((t.data, [1, c, h, w]))
            })
            .collect()
    });
    match work.await {
        Ok(Ok(groups)) => Ok(groups),
        Ok(Err(what)) => Err(error(StatusCode::BAD_REQUEST, what)),
        Err(_) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, "preprocessing failed")),
    }
}

/// The request's one input as groups of images for the network.
async fn inputs(m: &Served, tensors: Vec<Tensor>) -> Result<Groups, Response> {
    let bad = |what: String| Err(error(StatusCode::BAD_REQUEST, what));
    let max = m.batcher.options().max_batch_size;
    let [t] = <[Tensor; 1]>::try_from(tensors).map_err(|t| {
        error(StatusCode::BAD_REQUEST, format!("one input expected ('input' or 'image'), got {}", t.len()))
    })?;
    match (t.name.as_str(), t.values) {
        ("input", Values::F32(x)) => {
            let &[n, c, h, w] = t.shape.as_slice() else {
                return bad(format!("input 'input' has shape {:?}; [N, C, H, W] expected", t.shape));
            };
            if n == 0 || n > max {
                return bad(format!("input 'input' has {n} images; 1 to {max} (--max-batch-size) per request"));
            }
            if let Err(e) = m.config.check_input([n, c, h, w]) {
                return bad(format!("input 'input': {e}"));
            }
            Ok(vec![(x, [n, c, h, w])])
        }
        ("image", Values::Bytes(files)) => {
            if files.is_empty() || files.len() > max {
                return bad(format!("input 'image' has {} images; 1 to {max} (--max-batch-size)", files.len()));
            }
            preprocess_images(m, files).await
        }
        ("input", _) => bad("input 'input' is FP32".into()),
        ("image", _) => bad("input 'image' is BYTES (encoded PNG or JPEG files)".into()),
        (other, _) => bad(format!("no input '{other}' (inputs: input FP32 [N, C, H, W], image BYTES [N])")),
    }
}

/// Queues `work` for `m`'s worker, or answers 503 at once (with `Retry-After` when the queue is
/// full or the request would be late: the predicted wait, in whole seconds, at least 1).
pub fn submit(m: &Served, work: Work) -> Result<(), Response> {
    m.batcher.submit(Job { work, enqueued: Instant::now() }).map_err(|e| refused(m, e))
}

/// 503 when `m` would refuse any request now, decided before the body is read or parsed (see
/// [`super::batcher::Batcher::check`]); the body is then read and dropped as it arrives, so that a
/// client still sending it gets the answer and not a broken connection.
pub async fn shed(s: &Server, m: &Served, body: Body) -> Result<Body, Response> {
    match m.batcher.check() {
        Ok(()) => Ok(body),
        Err(e) => {
            discard(body, s.options.max_body_bytes).await;
            Err(refused(m, e))
        }
    }
}

/// Reads `body` to its end without keeping it, up to `limit` bytes (past them the connection is
/// left to close).
async fn discard(mut body: Body, limit: usize) {
    use axum::body::HttpBody;
    let mut seen = 0usize;
    while let Some(Ok(frame)) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
        seen += frame.data_ref().map_or(0, |d| d.len());
        if seen > limit {
            break;
        }
    }
}

/// The 503 for a refusal (with `Retry-After` when the queue is full or the request would be late).
fn refused(m: &Served, e: SubmitError) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, &e);
    if let SubmitError::Full(_) | SubmitError::Late(_) = e {
        let seconds = m.batcher.predicted_wait().as_secs_f64().ceil().max(1.0) as u64;
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    r
}

/// Queues every group and waits for all of them: the logits in order, with the longest wait.
pub async fn run(s: &Server, m: &Served, groups: Groups) -> Result<(Vec<f32>, Duration, Duration), Response> {
    let mut waiting = Vec::with_capacity(groups.len());
    for (x, dims) in groups {
        let (reply, answer) = oneshot::channel();
        submit(m, Work::Logits { x, dims, reply })?;
        waiting.push(answer);
    }
    let (mut logits, mut queued, mut compute) = (Vec::new(), Duration::ZERO, Duration::ZERO);
    let deadline = tokio::time::Instant::now() + s.options.request_timeout;
    for answer in waiting {
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(Ok(Done { logits: l, queued: q, compute: c, .. }))) => {
                s.metrics.queued(&m.name, q);
                logits.extend(l);
                queued = queued.max(q);
                compute = compute.max(c);
            }
            Ok(Ok(Err(what))) => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, what)),
            Ok(Err(_)) => return Err(error(StatusCode::SERVICE_UNAVAILABLE, "the model is shutting down")),
            Err(_) => {
                let t = s.options.request_timeout;
                return Err(error(StatusCode::GATEWAY_TIMEOUT, format!("no answer within {} ms", t.as_millis())));
            }
        }
    }
    Ok((logits, queued, compute))
}

/// How a request ended, for the metrics: a 503 is a refusal, any other error a failure.
fn outcome(result: &Result<Response, Response>) -> &'static str {
    match result {
        Ok(_) => "success",
        Err(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => "rejected",
        Err(_) => "failure",
    }
}

/// `value:index:label` for the `k` largest values of each row.
fn classification(values: &[f32], classes: usize, k: usize, labels: &[String]) -> Vec<String> {
    top_k_rows(values, classes, k)
        .into_iter()
        .flat_map(|row| {
            row.into_iter().map(|(i, v)| match labels.get(i) {
                Some(l) => format!("{v}:{i}:{l}"),
                None => format!("{v}:{i}"),
            })
        })
        .collect()
}

fn header_length(headers: &HeaderMap) -> Result<Option<usize>, Response> {
    match headers.get(oip::HEADER_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| error(StatusCode::BAD_REQUEST, format!("{} must be a byte count", oip::HEADER_LENGTH))),
    }
}

async fn infer_v(
    state: Shared,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match version_ok(&version) {
        Ok(()) => infer(state, Path(name), headers, body).await,
        Err(r) => r,
    }
}

async fn infer(State(s): Shared, Path(name): Path<String>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let m = match find(&s, &name) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let mut times = RequestTimes::default();
    let result = infer_on(&s, m, headers, body, &mut times).await;
    let total = started.elapsed();
    s.metrics.request(&m.name, outcome(&result), total);
    if let Ok(mut stats) = m.stats.lock() {
        stats.record_request(result.is_ok(), total, &times);
    }
    result.unwrap_or_else(|r| r)
}

async fn infer_on(
    s: &Server,
    m: &Served,
    headers: HeaderMap,
    body: Body,
    times: &mut RequestTimes,
) -> Result<Response, Response> {
    let body = shed(s, m, body).await?;
    let body = read_body(body, s.options.max_body_bytes).await?;
    let t = Instant::now();
    let (request, tensors) = oip::read_request(&body, header_length(&headers)?)
        .map_err(|BadRequest(what)| error(StatusCode::BAD_REQUEST, what))?;
    let classes = m.config.num_classes;
    // The outputs wanted, checked before any compute.
    let wanted: Vec<(String, serde_json::Map<String, Value>)> = if request.outputs.is_empty() {
        ["logits", "probabilities"].iter().map(|n| (n.to_string(), serde_json::Map::new())).collect()
    } else {
        request.outputs.iter().map(|o| (o.name.clone(), o.parameters.clone())).collect()
    };
    for (name, params) in &wanted {
        if name != "logits" && name != "probabilities" {
            return Err(error(StatusCode::BAD_REQUEST, format!("no output '{name}' (outputs: logits, probabilities)")));
        }
        if let Some(k) = params.get("classification")
            && k.as_u64().is_none_or(|k| k == 0)
        {
            return Err(error(StatusCode::BAD_REQUEST, "classification must be a positive count"));
        }
    }
    let groups = inputs(m, tensors).await?;
    times.input = t.elapsed();
    let (logits, queued, compute) = run(s, m, groups).await?;
    times.queued = queued;
    times.compute = compute;
    let t = Instant::now();
    let n = logits.len() / classes.max(1);
    let all_binary = oip::flag(&request.parameters, "binary_data_output");
    let mut outputs = Vec::new();
    let mut values = Vec::new();
    for (name, params) in wanted {
        let v = if name == "logits" { logits.clone() } else { softmax_rows(&logits, classes) };
        let binary = all_binary || oip::flag(&params, "binary_data");
        let (datatype, shape, vals) = match params.get("classification").and_then(Value::as_u64) {
            Some(k) => {
                let k = (k as usize).min(classes);
                ("BYTES", vec![n, k], OutputValues::Strings(classification(&v, classes, k, &m.labels)))
            }
            None => ("FP32", vec![n, classes], OutputValues::F32(v)),
        };
        outputs.push(ResponseOutput {
            name,
            datatype: datatype.into(),
            shape,
            parameters: Default::default(),
            data: None,
        });
        values.push((vals, binary));
    }
    let response = InferResponse { model_name: m.name.clone(), model_version: "1".into(), id: request.id, outputs };
    let (bytes, header) = oip::write_response(response, values)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the response: {e}")))?;
    times.output = t.elapsed();
    Ok(match header {
        None => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Some(len) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (oip::HEADER_LENGTH.parse().expect("valid name"), len.to_string()),
            ],
            bytes,
        )
            .into_response(),
    })
}

/// The image of a `/predictions` request: the raw body, or the first file of a multipart form.
pub async fn uploaded_image(s: &Server, request: Request) -> Result<(String, Vec<u8>), Response> {
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !is_form {
        let body = read_body(request.into_body(), s.options.max_body_bytes).await?;
        return Ok(("upload".into(), body.to_vec()));
    }
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("not a multipart form: {e}")))?;
    let mut total = 0usize;
    while let Some(field) = form.next_field().await.map_err(|e| error(StatusCode::BAD_REQUEST, e))? {
        let file = field.file_name().map(str::to_string);
        let bytes = field.bytes().await.map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
        total += bytes.len();
        if total > s.options.max_body_bytes {
            return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "the upload is over the body limit"));
        }
        if let Some(file) = file {
            return Ok((file, bytes.to_vec()));
        }
    }
    Err(error(StatusCode::BAD_REQUEST, "the form has no file"))
}

/// `POST /predictions/{name}`: one image file (raw body or multipart upload), answered with the
/// JSON `vgg classify --json` prints for it.
async fn predictions(State(s): Shared, Path(name): Path<String>, request: Request) -> Response {
    let started = Instant::now();
    let m = match find(&s, &name) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let result = async {
        let (parts, body) = request.into_parts();
        let request = Request::from_parts(parts, shed(&s, m, body).await?);
        let (file, bytes) = uploaded_image(&s, request).await?;
        let groups = preprocess_images(m, vec![bytes]).await?;
        let (logits, _, _) = run(&s, m, groups).await?;
        let probs = softmax_rows(&logits, m.config.num_classes);
        let top = top_k_rows(&probs, m.config.num_classes, 5).remove(0);
        let top = top
            .into_iter()
            .map(|(index, prob)| Scored {
                index,
                label: m.labels.get(index).cloned().unwrap_or_else(|| format!("class {index}")),
                prob,
            })
            .collect();
        Ok::<_, Response>(axum::Json(Prediction { image: file, top }).into_response())
    }
    .await;
    s.metrics.request(&m.name, outcome(&result), started.elapsed());
    result.unwrap_or_else(|r| r)
}

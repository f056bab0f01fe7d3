//! What every request passes through: the API key (`Authorization: Bearer <key>`, compared in
//! constant time, on every route but the health probes and the web page's own static files, which
//! hold no data and ask for the key themselves), the in-flight gauge, and one access log line on
//! stderr (text or JSON).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::Server;
use super::routes::error;

/// Whether `given` is the key, in time that does not depend on where they differ (both are hashed
/// first, so not on their lengths either).
pub fn key_matches(given: &str, key: &str) -> bool {
    let (a, b) = (Sha256::digest(given.as_bytes()), Sha256::digest(key.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses requests without the API key (when one is set), except the health probes.
pub async fn require_key(State(server): State<Arc<Server>>, request: Request, next: Next) -> Response {
    let Some(key) = &server.options.api_key else { return next.run(request).await };
    let path = request.uri().path();
    if path.starts_with("/v2/health/") || path == "/" || path.starts_with("/examples/") {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if key_matches(g, key) => next.run(request).await,
        _ => {
            let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong API key (Authorization: Bearer <key>)");
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

/// Counts the request in flight and writes its access log line when it is answered.
pub async fn log(State(server): State<Arc<Server>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    server.metrics.in_flight(1);
    let response = next.run(request).await;
    server.metrics.in_flight(-1);
    let status = response.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let bytes = response.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
    if server.options.log_json {
        let line = serde_json::json!({
            "time": chrono_like_now(), "method": method.as_str(), "path": path,
            "status": status, "ms": (ms * 1000.0).round() / 1000.0, "bytes": bytes,
        });
        eprintln!("{line}");
    } else {
        eprintln!("{} {method} {path} {status} {ms:.3} ms {bytes} bytes", chrono_like_now());
    }
    response.into_response()
}

/// Seconds since the epoch with milliseconds, e.g. `1764547200.123`.
fn chrono_like_now() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", t.as_secs(), t.subsec_millis())
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_match_only_themselves() {
        assert!(super::key_matches("s3cret", "s3cret"));
        assert!(!super::key_matches("s3cret ", "s3cret"));
        assert!(!super::key_matches("", "s3cret"));
    }
}

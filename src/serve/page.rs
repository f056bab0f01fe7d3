//! The web page at `/`: pick or drop an image (or one of the Fashion-MNIST examples built in),
//! see the top five classes as bars, and toggle a Grad-CAM overlay computed by the server
//! (`POST /explain/{name}`). One self-contained file: no external asset, no CDN.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;

use super::Server;
use super::batcher::Work;
use super::routes::{error, submit, uploaded_image};
use crate::explain::{Method, last_trunk_relu};

const PAGE: &str = include_str!("page.html");

/// The Fashion-MNIST examples the page offers (one per class), served at `/examples/{file}`.
pub const EXAMPLES: [(&str, &[u8]); 10] = [
    ("0-t-shirt.png", include_bytes!("../../assets/fashion-mnist/0-t-shirt.png")),
    ("1-trouser.png", include_bytes!("../../assets/fashion-mnist/1-trouser.png")),
    ("2-pullover.png", include_bytes!("../../assets/fashion-mnist/2-pullover.png")),
    ("3-dress.png", include_bytes!("../../assets/fashion-mnist/3-dress.png")),
    ("4-coat.png", include_bytes!("../../assets/fashion-mnist/4-coat.png")),
    ("5-sandal.png", include_bytes!("../../assets/fashion-mnist/5-sandal.png")),
    ("6-shirt.png", include_bytes!("../../assets/fashion-mnist/6-shirt.png")),
    ("7-sneaker.png", include_bytes!("../../assets/fashion-mnist/7-sneaker.png")),
    ("8-bag.png", include_bytes!("../../assets/fashion-mnist/8-bag.png")),
    ("9-ankle-boot.png", include_bytes!("../../assets/fashion-mnist/9-ankle-boot.png")),
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `GET /`: the page, with the served models in its picker.
pub async fn index(State(s): State<Arc<Server>>) -> Response {
    let options: String = s
        .models
        .iter()
        .map(|m| {
            format!("<option value=\"{0}\" title=\"{1}\">{0}</option>", escape(&m.name), escape(&m.config.to_string()))
        })
        .collect();
    let examples: String = EXAMPLES
        .iter()
        .map(|(f, _)| format!("<button type=\"button\" class=\"example\" data-file=\"{f}\"><img src=\"/examples/{f}\" alt=\"{f}\"></button>"))
        .collect();
    let html = PAGE.replace("{{MODELS}}", &options).replace("{{EXAMPLES}}", &examples);
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

/// `GET /examples/{file}`: a built-in example image.
pub async fn example(Path(file): Path<String>) -> Response {
    match EXAMPLES.iter().find(|(f, _)| *f == file) {
        Some((_, bytes)) => ([(header::CONTENT_TYPE, "image/png")], *bytes).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no example '{file}'")),
    }
}

/// `POST /explain/{name}`: one image (raw body or multipart upload) in, the Grad-CAM heat map of
/// its top class over the image as the network saw it out, as a PNG; the class is in the
/// `X-Class` and `X-Label` headers.
pub async fn explain(State(s): State<Arc<Server>>, Path(name): Path<String>, request: Request) -> Response {
    let Some(m) = s.model(&name) else { return error(StatusCode::NOT_FOUND, format!("no model '{name}'")) };
    let (_, bytes) = match uploaded_image(&s, request).await {
        Ok(upload) => upload,
        Err(r) => return r,
    };
    let Some(layer) = last_trunk_relu(&m.config) else {
        return error(StatusCode::BAD_REQUEST, "the network has no ReLU in its trunk");
    };
    let pre = m.preprocess.clone();
    let prepared = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let img = crate::image::decode(&bytes, "upload").map_err(|e| e.to_string())?;
        let view = pre.geometry(&img).map_err(|e| e.to_string())?;
        let x = pre.apply(&img).map_err(|e| e.to_string())?;
        Ok((view, x))
    })
    .await;
    let (view, x) = match prepared {
        Ok(Ok(v)) => v,
        Ok(Err(what)) => return error(StatusCode::BAD_REQUEST, what),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "preprocessing failed"),
    };
    if let Err(e) = m.config.check_input(x.dims()) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let (reply, answer) = oneshot::channel();
    let dims = x.dims();
    let call = move |net: &dyn crate::net::Network| {
        let method = Method::GradCam { layer };
        let _ = reply.send(net.explain(&x.data, dims, &method, None).map_err(|e| e.to_string()));
    };
    if let Err(r) = submit(m, Work::Call(Box::new(call))) {
        return r;
    }
    let explanation = match tokio::time::timeout(s.options.request_timeout, answer).await {
        Ok(Ok(Ok(mut e))) if !e.is_empty() => e.remove(0),
        Ok(Ok(Err(what))) => return error(StatusCode::BAD_REQUEST, what),
        Err(_) => return error(StatusCode::GATEWAY_TIMEOUT, "no explanation in time"),
        _ => return error(StatusCode::SERVICE_UNAVAILABLE, "the model is shutting down"),
    };
    let overlay = crate::explain::overlay(&view.data, &explanation.map);
    let mut png = Vec::new();
    let encoder = image::codecs::png::PngEncoder::new(&mut png);
    let written = image::ImageEncoder::write_image(
        encoder,
        &overlay,
        view.width as u32,
        view.height as u32,
        image::ExtendedColorType::Rgb8,
    );
    if written.is_err() {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "encoding the overlay failed");
    }
    let label = m.labels.get(explanation.class).cloned().unwrap_or_default();
    (
        [
            (header::CONTENT_TYPE, "image/png".to_string()),
            (header::HeaderName::from_static("x-class"), explanation.class.to_string()),
            (header::HeaderName::from_static("x-label"), label.chars().filter(char::is_ascii).collect()),
        ],
        png,
    )
        .into_response()
}

//! A load generator for `vgg serve`: sends the same inference request for a fixed time, either
//! closed-loop (C clients, each sending its next request when the last is answered) or open-loop
//! (requests started at a fixed rate, whatever the answers), and prints one JSON line: requests
//! answered per second, latency percentiles of the answered ones, and the count of each status.
//!
//! `cargo run --release --example serve_load -- URL MODEL SIDE CHANNELS closed:C|open:RATE SECONDS`
//! e.g. `... http://127.0.0.1:8000 fashion-mnist 32 1 closed:8 20` or `... open:400 20`.
//!
//! One thread, asynchronous, over keep-alive connections (a new one only when every open one is
//! busy), as wrk2 and vegeta work: the client has to be much cheaper per request than the server,
//! or an open loop at thousands of requests a second measures the client. The first version
//! started a thread and took a pooled blocking connection per request: 200 µs of CPU per request
//! against the server's HTTP side's ~95 µs, so at 4x the built-in model's capacity the client's
//! core fell behind and the latencies were its own.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

/// The request body (binary tensor extension) and its JSON header's length.
fn request(side: usize, channels: usize) -> (Bytes, String) {
    let x: Vec<f32> = (0..channels * side * side).map(|i| ((i as f32) * 0.013).sin()).collect();
    let head = format!(
        r#"{{"inputs":[{{"name":"input","shape":[1,{channels},{side},{side}],"datatype":"FP32","parameters":{{"binary_data_size":{}}}}}],"outputs":[{{"name":"logits","parameters":{{"binary_data":true}}}}]}}"#,
        x.len() * 4
    );
    let mut body = head.clone().into_bytes();
    x.iter().for_each(|v| body.extend_from_slice(&v.to_le_bytes()));
    (Bytes::from(body), head.len().to_string())
}

/// What every request needs, and the idle connections.
struct Client {
    addr: SocketAddr,
    host: String,
    path: String,
    body: Bytes,
    header_len: String,
    idle: RefCell<Vec<SendRequest<Full<Bytes>>>>,
    results: RefCell<Vec<(u16, Duration)>>,
}

impl Client {
    async fn connect(&self) -> Option<SendRequest<Full<Bytes>>> {
        let stream = tokio::net::TcpStream::connect(self.addr).await.ok()?;
        stream.set_nodelay(true).ok()?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        Some(sender)
    }

    /// One request, its latency counted from `due`; status 0 when the connection failed.
    async fn send(&self, due: Instant) {
        let status = self.exchange().await.unwrap_or(0);
        self.results.borrow_mut().push((status, due.elapsed()));
    }

    async fn exchange(&self) -> Option<u16> {
        // An idle connection the server has closed since is dropped, not counted as a failure.
        let mut sender = loop {
            let idle = self.idle.borrow_mut().pop();
            match idle {
                Some(mut s) => {
                    if s.ready().await.is_ok() {
                        break s;
                    }
                }
                None => {
                    let mut s = self.connect().await?;
                    s.ready().await.ok()?;
                    break s;
                }
            }
        };
        let req = hyper::Request::post(&self.path)
            .header(hyper::header::HOST, &self.host)
            .header("Inference-Header-Content-Length", &self.header_len)
            .body(Full::new(self.body.clone()))
            .ok()?;
        let response = sender.send_request(req).await.ok()?;
        let status = response.status().as_u16();
        response.into_body().collect().await.ok()?;
        self.idle.borrow_mut().push(sender);
        Some(status)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 7 {
        eprintln!("usage: serve_load URL MODEL SIDE CHANNELS closed:C|open:RATE SECONDS");
        std::process::exit(2);
    }
    let authority = args[1].trim_end_matches('/').trim_start_matches("http://").to_string();
    let addr: SocketAddr = authority.parse().expect("URL is http://IP:PORT");
    let (side, channels): (usize, usize) = (args[3].parse().unwrap(), args[4].parse().unwrap());
    let seconds: f64 = args[6].parse().unwrap();
    let (body, header_len) = request(side, channels);
    let client = Rc::new(Client {
        addr,
        host: authority,
        path: format!("/v2/models/{}/infer", args[2]),
        body,
        header_len,
        idle: RefCell::new(Vec::new()),
        results: RefCell::new(Vec::new()),
    });
    let mode = args[5].clone();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(seconds);
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let mut tasks = Vec::new();
        if let Some(c) = mode.strip_prefix("closed:") {
            for _ in 0..c.parse::<usize>().unwrap() {
                let client = client.clone();
                tasks.push(tokio::task::spawn_local(async move {
                    while Instant::now() < end {
                        client.send(Instant::now()).await;
                    }
                }));
            }
        } else if let Some(rate) = mode.strip_prefix("open:") {
            let interval = Duration::from_secs_f64(1.0 / rate.parse::<f64>().unwrap());
            let mut next = Instant::now();
            while next < end {
                // The timer ticks in milliseconds: start every request due by now, each timed
                // from when it was due, so that a late start shows in the figures.
                while next <= Instant::now() && next < end {
                    let client = client.clone();
                    let due = next;
                    tasks.push(tokio::task::spawn_local(async move { client.send(due).await }));
                    next += interval;
                }
                tokio::time::sleep_until(next.into()).await;
            }
        } else {
            panic!("mode is closed:C or open:RATE");
        }
        for t in tasks {
            let _ = tokio::time::timeout_at((Instant::now() + Duration::from_secs(60)).into(), t).await;
        }
    });
    let wall = started.elapsed().as_secs_f64();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut ok: Vec<f64> = vec![];
    let mut refused: Vec<f64> = vec![];
    for &(status, latency) in client.results.borrow().iter() {
        *statuses.entry(status).or_default() += 1;
        match status {
            200 => ok.push(latency.as_secs_f64()),
            503 => refused.push(latency.as_secs_f64()),
            _ => {}
        }
    }
    ok.sort_by(f64::total_cmp);
    refused.sort_by(f64::total_cmp);
    let pct = |v: &[f64], p: f64| if v.is_empty() { f64::NAN } else { v[((v.len() - 1) as f64 * p).round() as usize] };
    let line = serde_json::json!({
        "mode": mode, "seconds": wall, "answered_per_s": ok.len() as f64 / wall,
        "p50_s": pct(&ok, 0.5), "p90_s": pct(&ok, 0.9), "p99_s": pct(&ok, 0.99),
        "refused_p99_s": pct(&refused, 0.99),
        "statuses": statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
    });
    println!("{line}");
}

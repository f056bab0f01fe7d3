//! A load generator for `vgg serve`: sends the same inference request for a fixed time, either
//! closed-loop (C clients, each sending its next request when the last is answered) or open-loop
//! (requests started at a fixed rate, whatever the answers), and prints one JSON line: requests
//! answered per second, latency percentiles of the answered ones, and the count of each status.
//!
//! `cargo run --release --example serve_load -- URL MODEL SIDE CHANNELS closed:C|open:RATE SECONDS`
//! e.g. `... http://127.0.0.1:8000 fashion-mnist 32 1 closed:8 20` or `... open:400 20`.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn request(side: usize, channels: usize) -> (Vec<u8>, String) {
    let x: Vec<f32> = (0..channels * side * side).map(|i| ((i as f32) * 0.013).sin()).collect();
    let head = format!(
        r#"{{"inputs":[{{"name":"input","shape":[1,{channels},{side},{side}],"datatype":"FP32","parameters":{{"binary_data_size":{}}}}}],"outputs":[{{"name":"logits","parameters":{{"binary_data":true}}}}]}}"#,
        x.len() * 4
    );
    let mut body = head.clone().into_bytes();
    x.iter().for_each(|v| body.extend_from_slice(&v.to_le_bytes()));
    (body, head.len().to_string())
}

/// One request: its status and latency.
fn send(agent: &ureq::Agent, url: &str, body: &[u8], len: &str) -> (u16, Duration) {
    let t = Instant::now();
    let status = match agent.post(url).header("Inference-Header-Content-Length", len).send(body) {
        Ok(mut r) => {
            let mut sink = Vec::new();
            let _ = r.body_mut().as_reader().read_to_end(&mut sink);
            r.status().as_u16()
        }
        Err(_) => 0,
    };
    (status, t.elapsed())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 7 {
        eprintln!("usage: serve_load URL MODEL SIDE CHANNELS closed:C|open:RATE SECONDS");
        std::process::exit(2);
    }
    let url = format!("{}/v2/models/{}/infer", args[1].trim_end_matches('/'), args[2]);
    let (side, channels): (usize, usize) = (args[3].parse().unwrap(), args[4].parse().unwrap());
    let seconds: f64 = args[6].parse().unwrap();
    let (body, len) = request(side, channels);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let (tx, rx) = mpsc::channel::<(u16, Duration)>();
    let mode = args[5].clone();
    let started = Instant::now();
    std::thread::scope(|scope| {
        if let Some(c) = mode.strip_prefix("closed:") {
            for _ in 0..c.parse::<usize>().unwrap() {
                let (tx, agent, body, len, url) = (tx.clone(), agent.clone(), &body, &len, &url);
                scope.spawn(move || {
                    while Instant::now() < end {
                        let _ = tx.send(send(&agent, url, body, len));
                    }
                });
            }
        } else if let Some(rate) = mode.strip_prefix("open:") {
            let interval = Duration::from_secs_f64(1.0 / rate.parse::<f64>().unwrap());
            let mut next = Instant::now();
            while next < end {
                let (tx, agent, body, len, url) = (tx.clone(), agent.clone(), &body, &len, &url);
                scope.spawn(move || {
                    let _ = tx.send(send(&agent, url, body, len));
                });
                next += interval;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        } else {
            panic!("mode is closed:C or open:RATE");
        }
        drop(tx);
    });
    let wall = started.elapsed().as_secs_f64();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut ok: Vec<f64> = vec![];
    let mut refused: Vec<f64> = vec![];
    for (status, latency) in rx {
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

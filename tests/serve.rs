//! `vgg serve` over loopback: the Open Inference Protocol's endpoints and errors, the curl route,
//! batching, back-pressure, the API key and shutdown. Each test starts the real binary on an
//! ephemeral port with the built-in Fashion-MNIST model and stops it when done; requests are few
//! and bounded in time.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

/// A `vgg serve` process, killed when dropped.
struct Running {
    child: Child,
    base: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args(["serve", "--port", "0", "--log-format", "json"])
        .args(args)
        .env_remove("VGG_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start vgg serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("vgg serve: listening on ").unwrap_or_else(|| panic!("{line}")).to_string();
    let running = Running { child, base };
    let until = Instant::now() + Duration::from_secs(120);
    while get(&running, "/v2/health/ready").0 != 200 {
        assert!(Instant::now() < until, "not ready in 2 minutes");
        std::thread::sleep(Duration::from_millis(50));
    }
    running
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

type Reply = (u16, Vec<u8>, Vec<(String, String)>);

fn finish(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut r = r.expect("a response");
    let headers = r.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
    let mut body = Vec::new();
    r.body_mut().as_reader().read_to_end(&mut body).unwrap();
    (r.status().as_u16(), body, headers)
}

fn get(s: &Running, path: &str) -> Reply {
    finish(agent().get(format!("{}{path}", s.base)).call())
}

fn post(s: &Running, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut req = agent().post(format!("{}{path}", s.base));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    finish(req.send(body))
}

fn json_of(r: &Reply) -> Value {
    serde_json::from_slice(&r.1).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.1)))
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.2.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn example(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/assets/fashion-mnist/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The example preprocessed as the built-in model expects, `[1, 1, 32, 32]`.
fn preprocessed(name: &str) -> Vec<f32> {
    let pre = builtin_model().preprocess;
    pre.apply(&vgg::image::decode(&example(name), name).unwrap()).unwrap().data
}

/// Logits of the built-in model computed in this process, for comparison.
fn local_logits(x: &[f32], dims: [usize; 4]) -> Vec<f32> {
    let w = builtin_model();
    let net = vgg::net::build(w.model.config(), w.model.state_dict(), Default::default()).unwrap();
    net.logits(x, dims)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs()))
}

const INFER: &str = "/v2/models/fashion-mnist/infer";

#[test]
fn the_protocol_endpoints_answer_and_every_bad_request_gets_a_4xx() {
    let s = start(&["--max-body-mib", "1"]);
    // Health, server and model metadata.
    assert_eq!(json_of(&get(&s, "/v2/health/live"))["live"], true);
    assert_eq!(json_of(&get(&s, "/v2/health/ready"))["ready"], true);
    let meta = json_of(&get(&s, "/v2"));
    assert!(meta["extensions"].as_array().unwrap().contains(&json!("binary_tensor_data")));
    let model = json_of(&get(&s, "/v2/models/fashion-mnist"));
    assert_eq!(model["inputs"][0], json!({"name": "input", "datatype": "FP32", "shape": [-1, 1, -1, -1]}));
    assert_eq!(model["outputs"][0]["shape"], json!([-1, 10]));
    assert_eq!(get(&s, "/v2/models/fashion-mnist/ready").0, 200);
    let missing = get(&s, "/v2/models/nope");
    assert_eq!(missing.0, 404);
    assert!(json_of(&missing)["error"].as_str().unwrap().contains("fashion-mnist"));

    // FP32 in JSON: the same logits as the network in this process.
    let x = preprocessed("7-sneaker.png");
    let want = local_logits(&x, [1, 1, 32, 32]);
    let body =
        json!({"id": "a1", "inputs": [{"name": "input", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": x}]});
    let r = post(&s, INFER, &[], body.to_string().as_bytes());
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.1));
    let out = json_of(&r);
    assert_eq!(out["id"], "a1");
    assert_eq!(out["outputs"][0]["name"], "logits");
    assert!(close(&floats(&out["outputs"][0]["data"]), &want));
    let probs = floats(&out["outputs"][1]["data"]);
    assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-5);

    // An encoded image as base64 BYTES is preprocessed as `vgg classify` does: same logits.
    let png = base64::engine::general_purpose::STANDARD.encode(example("7-sneaker.png"));
    let body = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [png]}],
                      "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]});
    let out = json_of(&post(&s, INFER, &[], body.to_string().as_bytes()));
    let classes = out["outputs"][0]["data"].as_array().unwrap();
    assert_eq!(out["outputs"][0]["shape"], json!([1, 3]));
    let best = classes[0].as_str().unwrap();
    assert!(best.ends_with(":7:Sneaker"), "{best}");
    assert!((best.split(':').next().unwrap().parse::<f32>().unwrap() - probs[7]).abs() < 1e-6);

    // Triton's binary extension both ways.
    let file = example("7-sneaker.png");
    let header_json = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                            "parameters": {"binary_data_size": file.len() + 4}}],
                            "parameters": {"binary_data_output": true}})
    .to_string();
    let mut body = header_json.clone().into_bytes();
    body.extend_from_slice(&(file.len() as u32).to_le_bytes());
    body.extend_from_slice(&file);
    let len = header_json.len().to_string();
    let r = post(&s, INFER, &[("Inference-Header-Content-Length", &len)], &body);
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.1));
    let hl: usize = header(&r, "inference-header-content-length").unwrap().parse().unwrap();
    let head: Value = serde_json::from_slice(&r.1[..hl]).unwrap();
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 40);
    let logits: Vec<f32> = r.1[hl..hl + 40].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert!(close(&logits, &want));

    // The curl route answers what `vgg classify --json` prints.
    let r = post(&s, "/predictions/fashion-mnist", &[("Content-Type", "image/png")], &file);
    let p = json_of(&r);
    assert_eq!(p["top"][0]["label"], "Sneaker");
    assert_eq!(p["top"].as_array().unwrap().len(), 5);
    let boundary = "XyZ";
    let mut form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"shoe.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    form.extend_from_slice(&file);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ctype = format!("multipart/form-data; boundary={boundary}");
    let q = json_of(&post(&s, "/predictions/fashion-mnist", &[("Content-Type", &ctype)], &form));
    assert_eq!(q["image"], "shoe.png");
    assert_eq!(q["top"], p["top"]);

    // Grad-CAM for the page.
    let r = post(&s, "/explain/fashion-mnist", &[], &file);
    assert_eq!(r.0, 200);
    assert_eq!(header(&r, "content-type"), Some("image/png"));
    assert_eq!(header(&r, "x-label"), Some("Sneaker"));
    let page = String::from_utf8(get(&s, "/").1).unwrap();
    assert!(page.contains("<option value=\"fashion-mnist\""));

    // Bad input: a 4xx with a JSON error, and the server carries on.
    let truncated = &body[..body.len() - 10];
    let bomb = base64::engine::general_purpose::STANDARD.encode(claimed_png(20_000));
    type Case<'a> = (Vec<u8>, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (b"{not json".to_vec(), vec![], 400, "not an inference request"),
        (json!({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": vec![0.0; 3072]}]}).to_string().into_bytes(), vec![], 400, "channel"),
        (json!({"inputs": [{"name": "input", "shape": [1, 1, 32, 32], "datatype": "INT8", "data": vec![0; 1024]}]}).to_string().into_bytes(), vec![], 400, "INT8"),
        (json!({"inputs": [{"name": "input", "shape": [1024], "datatype": "FP32", "data": vec![0.0; 1024]}]}).to_string().into_bytes(), vec![], 400, "[N, C, H, W]"),
        (json!({"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [0.0]}]}).to_string().into_bytes(), vec![], 400, "no input 'pixels'"),
        (json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["bm90IGFuIGltYWdl"]}]}).to_string().into_bytes(), vec![], 400, "cannot decode"),
        (json!({"inputs": [{"name": "input", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": vec![0.0; 1024]}], "outputs": [{"name": "features"}]}).to_string().into_bytes(), vec![], 400, "no output 'features'"),
        (truncated.to_vec(), vec![("Inference-Header-Content-Length", &len)], 400, "declares"),
        (json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [bomb]}]}).to_string().into_bytes(), vec![], 400, "over the limit of 89478485 pixels"),
    ];
    for (body, headers, status, needle) in cases {
        let r = post(&s, INFER, &headers, &body);
        assert_eq!(r.0, status, "{needle}: {}", String::from_utf8_lossy(&r.1));
        let e = json_of(&r)["error"].as_str().unwrap().to_string();
        assert!(e.contains(needle), "{needle}: {e}");
    }
    assert_eq!(post(&s, "/v2/models/nope/infer", &[], b"{}").0, 404);
    // A body over --max-body-mib is refused from its declared length, before it is read.
    let (status, body) = raw_post(&s, INFER, 2 << 20);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("over 1048576 bytes"), "{body}");

    // Statistics and metrics saw it all.
    let stats = json_of(&get(&s, "/v2/models/fashion-mnist/stats"));
    let st = &stats["model_stats"][0];
    assert_eq!(st["inference_stats"]["success"]["count"], 3);
    assert_eq!(st["inference_stats"]["fail"]["count"], 10);
    assert!(st["execution_count"].as_u64().unwrap() >= 5);
    let metrics = String::from_utf8(get(&s, "/metrics").1).unwrap();
    assert!(
        metrics.contains("vgg_inference_requests_total{model=\"fashion-mnist\",outcome=\"success\"} 5"),
        "{metrics}"
    );
    assert!(metrics.contains("vgg_batch_size_count{model=\"fashion-mnist\"}"));
    assert!(metrics.contains("vgg_queue_depth{model=\"fashion-mnist\"} 0"));
}

/// A POST declaring `length` bytes of body but sending only the first KiB, then the answer's status
/// and body (a client like ureq would still be writing when the server refuses).
fn raw_post(s: &Running, path: &str, length: usize) -> (u16, String) {
    use std::io::Write;
    let addr = s.base.strip_prefix("http://").unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        tcp,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    .unwrap();
    let _ = tcp.write_all(&vec![b' '; 1024]);
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

/// A PNG whose header claims `side` x `side` pixels, with no pixel data: a decompression bomb's
/// first bytes.
fn claimed_png(side: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut crc = flate2::Crc::new();
    crc.update(&ihdr);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc.sum().to_be_bytes());
    // The first row's worth of compressed zeros: enough for a reader to reach the pixel data.
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut z, &vec![0u8; 1 + 3 * side as usize]).unwrap();
    let mut idat = b"IDAT".to_vec();
    idat.extend_from_slice(&z.finish().unwrap());
    let mut crc = flate2::Crc::new();
    crc.update(&idat);
    png.extend_from_slice(&((idat.len() - 4) as u32).to_be_bytes());
    png.extend_from_slice(&idat);
    png.extend_from_slice(&crc.sum().to_be_bytes());
    png.extend_from_slice(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xae, 0x42, 0x60, 0x82]);
    png
}

/// `[n, 1, side, side]` images as a binary FP32 request.
fn binary_images(n: usize, side: usize, seed: f32) -> (Vec<u8>, String) {
    let x: Vec<f32> = (0..n * side * side).map(|i| (i as f32 * 0.37 + seed).sin()).collect();
    let head = json!({"inputs": [{"name": "input", "shape": [n, 1, side, side], "datatype": "FP32",
                     "parameters": {"binary_data_size": x.len() * 4}}],
                     "outputs": [{"name": "logits"}]})
    .to_string();
    let mut body = head.clone().into_bytes();
    x.iter().for_each(|v| body.extend_from_slice(&v.to_le_bytes()));
    (body, head.len().to_string())
}

#[test]
fn concurrent_requests_share_forward_passes_and_get_their_own_answers() {
    let s = start(&["--max-batch-size", "8", "--max-queue-delay-us", "300000"]);
    let requests: Vec<Value> = (0..6)
        .map(|i| {
            let x: Vec<f32> = (0..1024).map(|j| ((j * (i + 3)) % 17) as f32 / 8.0 - 1.0).collect();
            json!({"inputs": [{"name": "input", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": x}]})
        })
        .collect();
    let alone: Vec<Value> = requests.iter().map(|b| json_of(&post(&s, INFER, &[], b.to_string().as_bytes()))).collect();
    let before =
        json_of(&get(&s, "/v2/models/fashion-mnist/stats"))["model_stats"][0]["execution_count"].as_u64().unwrap();
    assert_eq!(before, 6, "one forward pass each when sent one at a time");
    let together: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            requests.iter().map(|b| scope.spawn(|| json_of(&post(&s, INFER, &[], b.to_string().as_bytes())))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (a, b) in alone.iter().zip(&together) {
        assert!(close(&floats(&b["outputs"][0]["data"]), &floats(&a["outputs"][0]["data"])));
    }
    let st = json_of(&get(&s, "/v2/models/fashion-mnist/stats"))["model_stats"][0].clone();
    let passes = st["execution_count"].as_u64().unwrap() - before;
    println!("6 concurrent requests ran in {passes} forward passes");
    assert!(passes < 6, "{passes} forward passes for 6 concurrent requests");
    assert!(st["batch_stats"].as_array().unwrap().iter().any(|b| b["batch_size"].as_u64().unwrap() > 1));
}

#[test]
fn a_full_queue_answers_503_at_once_and_the_server_carries_on() {
    // One request computing, one waiting: a burst of eight leaves the rest with fast 503s.
    let s = start(&["--max-batch-size", "1", "--max-queue-size", "1", "--max-queue-delay-us", "0"]);
    let (body, len) = binary_images(1, 384, 0.5);
    let headers = [("Inference-Header-Content-Length", len.as_str())];
    let replies: Vec<(Reply, Duration)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    let t = Instant::now();
                    let r = post(&s, INFER, &headers, &body);
                    (r, t.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: Vec<&Reply> = replies.iter().map(|(r, _)| r).filter(|r| r.0 == 200).collect();
    let refused: Vec<&(Reply, Duration)> = replies.iter().filter(|(r, _)| r.0 == 503).collect();
    println!("burst of 8: {} answered, {} refused", ok.len(), refused.len());
    assert_eq!(
        ok.len() + refused.len(),
        8,
        "only 200s and 503s: {:?}",
        replies.iter().map(|r| r.0.0).collect::<Vec<_>>()
    );
    assert!(!refused.is_empty() && !ok.is_empty());
    for (r, _) in &refused {
        assert!(retry_after(r) >= 1);
        assert!(json_of(r)["error"].as_str().unwrap().contains("queue is full"));
    }
    let answers: Vec<Value> = ok.iter().map(|r| json_of(r)["outputs"][0]["data"].clone()).collect();
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "the same input gives the same answer");
    // Afterwards it answers normally.
    let again = post(&s, INFER, &headers, &body);
    assert_eq!(again.0, 200);
    let metrics = String::from_utf8(get(&s, "/metrics").1).unwrap();
    assert!(metrics.contains(&format!("outcome=\"rejected\"}} {}", refused.len())), "{metrics}");
}

/// The whole seconds of a 503's `Retry-After`.
fn retry_after(r: &Reply) -> u64 {
    header(r, "retry-after").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no Retry-After in {:?}", r.0))
}

#[test]
fn a_latency_budget_refuses_what_the_backlog_would_answer_late() {
    // A queue with room for everything, but a budget of a microsecond: the first request of a
    // burst finds the model idle and is served; any that arrives while it is busy is predicted
    // late and refused at once, although the queue has room.
    let s = start(&[
        "--max-batch-size",
        "8",
        "--max-queue-size",
        "64",
        "--max-queue-delay-us",
        "0",
        "--latency-budget-us",
        "1",
    ]);
    let (body, len) = binary_images(1, 384, 0.25);
    let headers = [("Inference-Header-Content-Length", len.as_str())];
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8).map(|_| scope.spawn(|| post(&s, INFER, &headers, &body))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: Vec<&Reply> = replies.iter().filter(|r| r.0 == 200).collect();
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.0 == 503).collect();
    println!("burst of 8 with a 1 us budget: {} answered, {} refused", ok.len(), refused.len());
    assert_eq!(
        ok.len() + refused.len(),
        8,
        "only 200s and 503s: {:?}",
        replies.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert!(!ok.is_empty() && !refused.is_empty());
    for r in &refused {
        assert!(retry_after(r) >= 1);
        let why = json_of(r)["error"].as_str().unwrap().to_string();
        assert!(why.contains("past the latency budget of 0 ms"), "{why}");
    }
    let answers: Vec<Value> = ok.iter().map(|r| json_of(r)["outputs"][0]["data"].clone()).collect();
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "the same input gives the same answer");
    // Nothing of the refused requests stayed behind: an idle model serves again.
    assert_eq!(post(&s, INFER, &headers, &body).0, 200);
    let metrics = String::from_utf8(get(&s, "/metrics").1).unwrap();
    assert!(metrics.contains(&format!("outcome=\"rejected\"}} {}", refused.len())), "{metrics}");
    assert!(metrics.contains("vgg_queue_depth{model=\"fashion-mnist\"} 0"), "{metrics}");
    // While the model is busy, a request is refused before its body is read: a malformed one
    // gets the 503, not the 400 its body earns (which it gets from an idle model).
    let busy = std::sync::atomic::AtomicBool::new(true);
    let malformed: Vec<Reply> = std::thread::scope(|scope| {
        scope.spawn(|| {
            assert_eq!(post(&s, INFER, &headers, &body).0, 200);
            busy.store(false, std::sync::atomic::Ordering::Release);
        });
        let mut replies = Vec::new();
        while busy.load(std::sync::atomic::Ordering::Acquire) {
            replies.push(post(&s, INFER, &[], b"{not json"));
        }
        replies
    });
    let shed: Vec<&Reply> = malformed.iter().filter(|r| r.0 == 503).collect();
    println!("malformed requests during a pass: {} refused unread of {}", shed.len(), malformed.len());
    assert!(
        malformed.iter().all(|r| r.0 == 400 || r.0 == 503),
        "{:?}",
        malformed.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert!(!shed.is_empty(), "none arrived during the pass");
    assert!(shed.iter().all(|r| json_of(r)["error"].as_str().unwrap().contains("latency budget")));
    assert_eq!(post(&s, INFER, &[], b"{not json").0, 400, "an idle model reads the body");
}

#[test]
fn the_api_key_guards_everything_but_the_health_probes_and_cors_is_opt_in() {
    let s = start(&["--api-key", "s3cret", "--cors", "http://localhost:9999"]);
    assert_eq!(get(&s, "/v2/health/ready").0, 200);
    for (auth, status) in [(None, 401), (Some("Bearer nope"), 401), (Some("s3cret"), 401), (Some("Bearer s3cret"), 200)]
    {
        let mut req = agent().get(format!("{}/v2/models/fashion-mnist", s.base));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let r = finish(req.call());
        assert_eq!(r.0, status, "{auth:?}");
        if status == 401 {
            assert!(json_of(&r)["error"].as_str().unwrap().contains("API key"));
        }
    }
    assert_eq!(post(&s, INFER, &[], b"{}").0, 401);
    assert_eq!(get(&s, "/metrics").0, 401);
    let r = finish(agent().get(format!("{}/v2/health/live", s.base)).header("Origin", "http://localhost:9999").call());
    assert_eq!(header(&r, "access-control-allow-origin"), Some("http://localhost:9999"));
    let plain = start(&[]);
    let r = finish(agent().get(format!("{}/v2/health/live", plain.base)).header("Origin", "http://evil.test").call());
    assert_eq!(header(&r, "access-control-allow-origin"), None, "no CORS unless asked");
}

#[test]
fn sigterm_finishes_the_requests_in_flight_then_exits() {
    let mut s = start(&["--max-batch-size", "4"]);
    let (body, len) = binary_images(4, 384, 0.25);
    let base = s.base.clone();
    let in_flight = std::thread::spawn(move || {
        let req = agent().post(format!("{base}{INFER}")).header("Inference-Header-Content-Length", &len);
        finish(req.send(&body[..])).0
    });
    std::thread::sleep(Duration::from_millis(300));
    unsafe {
        libc::kill(s.child.id() as i32, libc::SIGTERM);
    }
    assert_eq!(in_flight.join().unwrap(), 200, "the request in flight is answered");
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < until, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(agent().get(format!("{}/v2/health/live", s.base)).call().is_err(), "no longer accepting");
}

/// The CPUs each thread of process `pid` may run on, by thread name (`/proc/PID/task`), with the
/// main thread as `main`.
fn thread_cpus(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let tid = dir.file_name().unwrap().to_string_lossy().to_string();
        let name = if tid == pid.to_string() {
            "main".to_string()
        } else {
            std::fs::read_to_string(dir.join("comm")).unwrap().trim().to_string()
        };
        let status = std::fs::read_to_string(dir.join("status")).unwrap();
        let cpus = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim().to_string();
        out.push((name, cpus));
    }
    out
}

#[cfg(target_os = "linux")]
#[test]
fn compute_cpus_keep_the_forward_passes_and_the_http_side_apart() {
    // Exit code 2 for a list that does not read (a usage error), 1 for CPUs it cannot have.
    let refused = |list: &str, code: i32| {
        let out =
            Command::new(env!("CARGO_BIN_EXE_vgg")).args(["serve", "--port", "0", "--compute-cpus", list]).output();
        let out = out.unwrap();
        assert_eq!(out.status.code(), Some(code), "--compute-cpus {list}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(refused("1023", 1).contains("CPUs 1023 are not available"));
    assert!(refused("2-1", 2).contains("unknown CPU list '2-1'"));
    let allowed = vgg::serve::affinity::current().unwrap();
    assert!(refused(&allowed.to_string(), 1).contains("leaves no CPU for the HTTP side"));
    if allowed.len() < 2 {
        println!("one CPU: only the refusals are checked");
        return;
    }
    let compute = vgg::serve::affinity::CpuSet::new(vec![allowed.cpus()[0]]);
    let http = allowed.without(&compute);
    let s = start(&["--compute-cpus", &compute.to_string()]);
    let threads = thread_cpus(s.child.id());
    let of = |prefix: &str| {
        threads.iter().filter(|(n, _)| n.starts_with(prefix)).map(|(_, c)| c.clone()).collect::<Vec<_>>()
    };
    assert_eq!(of("vgg-serve-"), vec![compute.to_string()], "{threads:?}");
    assert!(
        !of("tokio-rt-worker").is_empty() && of("tokio-rt-worker").iter().all(|c| *c == http.to_string()),
        "{threads:?}"
    );
    assert_eq!(of("main"), vec![http.to_string()], "{threads:?}");
    let x = vec![0.5f32; 1024];
    let body = json!({"inputs": [{"name": "input", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": x}]});
    let r = post(&s, INFER, &[], body.to_string().as_bytes());
    assert_eq!(r.0, 200);
    assert!(close(&floats(&json_of(&r)["outputs"][0]["data"]), &local_logits(&x, [1, 1, 32, 32])));
}

/// A WebDriver call to chromedriver: the `value` of its answer.
fn webdriver(agent: &ureq::Agent, method: &str, url: &str, body: Option<Value>) -> Value {
    let r = match (method, body) {
        ("GET", _) => finish(agent.get(url).call()),
        ("DELETE", _) => finish(agent.delete(url).call()),
        (_, b) => {
            finish(agent.post(url).header("Content-Type", "application/json").send(b.unwrap_or(json!({})).to_string()))
        }
    };
    let v = json_of(&r);
    assert_eq!(r.0, 200, "{method} {url}: {v}");
    v["value"].clone()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn the_web_page_classifies_an_uploaded_example_in_headless_chromium() {
    // Debian's chromium and chromium-driver (installed by .ci/run).
    let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("chromedriver is missing: apt-get install chromium chromium-driver (as .ci/run does)");
    let s = start(&[]);
    let port = free_port();
    let mut chromedriver = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let wd = format!("http://127.0.0.1:{port}");
    let agent = agent();
    let until = Instant::now() + Duration::from_secs(30);
    while finish_ok(agent.get(format!("{wd}/status")).call()).is_none() {
        assert!(Instant::now() < until, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let profile = scratch("vgg-chromium");
    let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
        "binary": "/usr/bin/chromium",
        "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1000,800", format!("--user-data-dir={}", profile.display())]}}}});
    let session =
        webdriver(&agent, "POST", &format!("{wd}/session"), Some(caps))["sessionId"].as_str().unwrap().to_string();
    let at = format!("{wd}/session/{session}");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        webdriver(&agent, "POST", &format!("{at}/url"), Some(json!({"url": format!("{}/", s.base)})));
        let find = |css: &str| {
            let e = webdriver(
                &agent,
                "POST",
                &format!("{at}/element"),
                Some(json!({"using": "css selector", "value": css})),
            );
            e.as_object().unwrap().values().next().unwrap().as_str().unwrap().to_string()
        };
        let script = |js: &str| {
            webdriver(&agent, "POST", &format!("{at}/execute/sync"), Some(json!({"script": js, "args": []})))
        };
        let wait_for = |js: &str| {
            let until = Instant::now() + Duration::from_secs(30);
            loop {
                let v = script(js);
                if v.as_bool() == Some(true) || v.as_str().is_some_and(|s| !s.is_empty()) {
                    return v;
                }
                assert!(Instant::now() < until, "timed out waiting for {js}");
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        // Upload an example through the file picker, as a user would.
        let path = format!("{}/assets/fashion-mnist/7-sneaker.png", env!("CARGO_MANIFEST_DIR"));
        let file = find("#file");
        webdriver(&agent, "POST", &format!("{at}/element/{file}/value"), Some(json!({"text": path})));
        let top = wait_for("return document.body.dataset.top || ''");
        assert_eq!(top, "Sneaker");
        let bars = script("return document.querySelectorAll('#bars .bar').length");
        assert_eq!(bars, 5);
        // The Grad-CAM overlay, computed by the server.
        let toggle = find("#gradcam");
        webdriver(&agent, "POST", &format!("{at}/element/{toggle}/click"), None);
        wait_for(
            "return document.getElementById('cam').classList.contains('on') && document.getElementById('cam').complete",
        );
        std::thread::sleep(Duration::from_millis(300));
        let shot = webdriver(&agent, "GET", &format!("{at}/screenshot"), None);
        let png = base64::engine::general_purpose::STANDARD.decode(shot.as_str().unwrap()).unwrap();
        let img = vgg::image::decode(&png, "screenshot").unwrap();
        assert!(img.width >= 900 && img.height >= 500, "{}x{}", img.width, img.height);
        let out =
            std::env::var("VGG_SCREENSHOT").map(std::path::PathBuf::from).unwrap_or_else(|_| profile.join("page.png"));
        std::fs::write(&out, &png).unwrap();
        println!("screenshot: {}", out.display());
    }));
    let _ = finish_ok(agent.delete(&at).call());
    let _ = chromedriver.kill();
    let _ = chromedriver.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn finish_ok(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Option<Reply> {
    r.ok().map(|r| finish(Ok(r))).filter(|r| r.0 == 200)
}

#[test]
fn several_models_side_by_side_and_a_request_past_its_timeout_gets_504() {
    // The same weights twice, one kept in bfloat16; a timeout that no forward pass of large images meets.
    let s = start(&[
        "--model",
        "f32=fashion-mnist",
        "--model",
        "bf16=fashion-mnist",
        "--half",
        "bf16",
        "--timeout-ms",
        "300",
    ]);
    let stats = json_of(&get(&s, "/v2/models/stats"));
    let names: Vec<&str> =
        stats["model_stats"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["f32", "bf16"]);
    let x = preprocessed("9-ankle-boot.png");
    let body = json!({"inputs": [{"name": "input", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": x}],
                      "outputs": [{"name": "probabilities"}]})
    .to_string();
    let p = |model: &str| {
        let r = post(&s, &format!("/v2/models/{model}/infer"), &[], body.as_bytes());
        assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.1));
        floats(&json_of(&r)["outputs"][0]["data"])
    };
    let (one, other) = (p("f32"), p("bf16"));
    assert_eq!(one, other, "two names, the same network");
    let logits = local_logits(&x, [1, 1, 32, 32]);
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.iter().map(|v| (v - m).exp()).collect();
    let full: Vec<f32> = e.iter().map(|v| v / e.iter().sum::<f32>()).collect();
    assert_ne!(one, full, "--half rounds the weights to bfloat16");
    assert!(full.iter().zip(&one).all(|(a, b)| (a - b).abs() < 0.02), "{full:?} vs {one:?}");
    assert_eq!(
        json_of(&get(&s, "/v2/models/bf16"))["parameters"]["runs_on"].as_str().map(|r| r.contains("engine")),
        Some(true)
    );
    // Four 640x640 images (51 GMAC, over a second even in a release build): 504.
    let (big, len) = binary_images(4, 640, 0.1);
    let r = post(&s, "/v2/models/f32/infer", &[("Inference-Header-Content-Length", &len)], &big);
    assert_eq!(r.0, 504, "{}", String::from_utf8_lossy(&r.1));
    assert!(json_of(&r)["error"].as_str().unwrap().contains("no answer within 300 ms"));
    // The forward pass still runs for the timed-out request; once it is done, answers come again.
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let r = post(&s, "/v2/models/f32/infer", &[], body.as_bytes());
        if r.0 == 200 {
            break;
        }
        // Meanwhile small requests time out behind it too, or find the queue full.
        assert!(r.0 == 504 || r.0 == 503, "{}", String::from_utf8_lossy(&r.1));
        assert!(Instant::now() < until, "no answer after the timed-out request");
        std::thread::sleep(Duration::from_millis(200));
    }
}

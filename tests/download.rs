//! The real download path (ureq, sha256 check, cache, atomic rename) against an HTTP server this
//! test runs on 127.0.0.1.

mod common;

use common::scratch;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::thread;

use sha2::{Digest, Sha256};
use vgg::weights::WeightsError;
use vgg::weights::registry::{self, Fetcher, download};

/// Serves `body` for every request, `requests` times, then stops. Returns the base URL.
fn serve(body: Vec<u8>, requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&body).unwrap();
        }
    });
    format!("http://{addr}/models/")
}

fn tmp(name: &str) -> PathBuf {
    let d = scratch("vgg-dl");
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn downloads_verify_the_hash_prefix_and_land_atomically() {
    let body: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let hash: String = Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
    let base = serve(body.clone(), 2);
    let dest = tmp(&format!("weights-{}.pth", &hash[..8]));
    let mut seen = 0;
    download(&format!("{base}x.pth"), &dest, Some(&hash[..8]), &mut |done, total| {
        assert_eq!(total, Some(body.len() as u64));
        seen = done;
    })
    .unwrap();
    assert_eq!(seen, body.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(registry::hash_prefix_of(dest.file_name().unwrap().to_str().unwrap()), Some(&hash[..8]));
    // A wrong hash keeps nothing under the final name, nor the partial file.
    let dest2 = tmp("other-deadbeef.pth");
    let err = download(&format!("{base}x.pth"), &dest2, Some("deadbeef"), &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, WeightsError::Checksum { .. }), "{err}");
    assert!(!dest2.exists() && !dest2.with_extension("partial").exists());
}

#[test]
fn named_weights_go_through_the_cache_and_refuse_a_wrong_file() {
    // The server hands out bytes that are not torchvision's vgg16 file: the sha256 check must catch it.
    let base = serve(b"definitely not vgg16".to_vec(), 1);
    let fetcher = Fetcher { cache_dir: tmp("cache"), base_url: base };
    let err = fetcher.get("torchvision:vgg16", &mut |_, _| {}).unwrap_err();
    match err {
        WeightsError::Checksum { expected, .. } => assert_eq!(expected, "397923af"),
        other => panic!("expected a checksum error, got {other}"),
    }
    assert!(!fetcher.path_of(registry::lookup("vgg16").unwrap()).exists());
    // A file already in the cache is used as is, without a request.
    let cached = fetcher.path_of(registry::lookup("vgg11").unwrap());
    std::fs::write(&cached, b"x").unwrap();
    assert_eq!(fetcher.get("torchvision:vgg11", &mut |_, _| {}).unwrap(), cached);
}

#[test]
fn an_unreachable_server_says_which_url_and_where_to_put_the_file() {
    let fetcher = Fetcher { cache_dir: tmp("cache2"), base_url: "http://127.0.0.1:9/models/".into() };
    let err = fetcher.get("torchvision:vgg19_bn", &mut |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("http://127.0.0.1:9/models/vgg19_bn-c79401a0.pth"), "{err}");
    assert!(err.contains(&tmp("cache2").join("vgg19_bn-c79401a0.pth").display().to_string()), "{err}");
}

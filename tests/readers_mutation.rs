//! Every weights reader against damaged files: valid small files of each format (written by the
//! real tools where there is one: torch, timm, Keras 3, tf2onnx, torch's ONNX exporters, this
//! project's Caffe encoder checked by OpenCV) cut at many offsets and with random bytes changed.
//! Each case must end in an error naming the file or a state dict, never a panic, and no single allocation may
//! exceed a small multiple of the file's size (a declared shape is checked against the bytes
//! present before anything that size is allocated). One test in this binary, so that the counting
//! allocator sees one case at a time.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The largest single allocation since the last reset.
static LARGEST: AtomicUsize = AtomicUsize::new(0);

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A reader on bytes named "damaged.bin": `Err` with its message.
type Reader = fn(&[u8]) -> Result<(), String>;

const NAME: &str = "damaged.bin";

fn here(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn every_reader_survives_truncation_and_byte_changes_within_bounded_memory() {
    let pth: Reader = |b| vgg::weights::pth::read(b, NAME).map(drop).map_err(|e| e.to_string());
    let safetensors: Reader = |b| vgg::weights::safetensors::read(b, NAME).map(drop).map_err(|e| e.to_string());
    let keras: Reader = |b| vgg::weights::keras::read(b, NAME).map(drop).map_err(|e| e.to_string());
    let onnx: Reader = |b| vgg::onnx::read(b, NAME).map(drop).map_err(|e| e.to_string());
    let caffe: Reader = |b| vgg::weights::caffe::read(b, NAME).map(drop).map_err(|e| e.to_string());
    let files: Vec<(&str, PathBuf, Reader)> = vec![
        ("pth (zip)", common::fixtures().join("checkpoints/small.pth"), pth),
        ("pth (legacy)", common::fixtures().join("checkpoints/small_legacy.pth"), pth),
        ("pth (checkpoint)", common::fixtures().join("checkpoints/small_training_ckpt.pth"), pth),
        ("pth (whole module)", here("tests/fixtures/pth/whole_vgg.pth"), pth),
        ("safetensors", common::fixtures().join("checkpoints/small.safetensors"), safetensors),
        ("safetensors (timm)", here("tests/fixtures/timm/vgg11_bn_tiny.safetensors"), safetensors),
        ("Keras 2 h5", here("tests/fixtures/keras3/functional_legacy.h5"), keras),
        ("Keras 3 .weights.h5", here("tests/fixtures/keras3/functional.weights.h5"), keras),
        ("Keras 3 .keras", here("tests/fixtures/keras3/sequential.keras"), keras),
        ("ONNX (tf2onnx)", here("tests/fixtures/onnx/tf2onnx_keras3.onnx"), onnx),
        ("ONNX (torch)", here("tests/fixtures/onnx/torch_script.onnx"), onnx),
        ("caffemodel (V1)", here("tests/fixtures/caffe/vgg11_tiny_v1.caffemodel"), caffe),
        ("caffemodel (V2)", here("tests/fixtures/caffe/vgg11_tiny_v2.caffemodel"), caffe),
    ];
    let mut total = 0;
    for (what, path, read) in files {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(read(&bytes).is_ok(), "{what}: the intact file must read");
        // Generous: a reader may hold the file, a decoded copy and its f32 tensors at once.
        let limit = 8 * bytes.len() + (1 << 20);
        let mut state = 0x243f6a8885a308d3u64 ^ bytes.len() as u64;
        let run = |case: &str, data: &[u8]| {
            LARGEST.store(0, Ordering::Relaxed);
            let r = catch_unwind(AssertUnwindSafe(|| read(data)));
            let largest = LARGEST.load(Ordering::Relaxed);
            let Ok(result) = r else { panic!("{what}: panic on {case}") };
            if let Err(message) = result {
                assert!(message.contains(NAME), "{what}: {case}: the error does not name the file: {message}");
            }
            assert!(largest <= limit, "{what}: {case}: an allocation of {largest} bytes for a file of {}", data.len());
        };
        let step = (bytes.len() / 200).max(1);
        let mut cases = 0;
        for cut in (0..bytes.len()).step_by(step) {
            run(&format!("a cut at {cut}"), &bytes[..cut]);
            cases += 1;
        }
        for _ in 0..200 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let at = (state >> 33) as usize % bytes.len();
            let mut bad = bytes.clone();
            bad[at] = (state >> 7) as u8;
            if (state >> 60) & 1 == 1 && at + 4 <= bad.len() {
                // Sometimes a whole little-endian word, so that lengths and dims go far wrong.
                bad[at..at + 4].copy_from_slice(&((state >> 20) as u32).to_le_bytes());
            }
            run(&format!("byte {at} changed"), &bad);
            cases += 1;
        }
        println!("{what}: {cases} damaged files, no panic, no allocation over {limit} bytes");
        total += cases;
    }
    println!("{total} cases in all");
}

//! Shared helpers for the fixture tests: where `../shared/fixtures` is, the counter-based weight
//! formula of its FORMULA.md, and error measures.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::Tensor;

/// `../shared/fixtures` next to the checkout (or `$VGG_FIXTURES`); panics with a clear message if absent.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("VGG_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"));
    assert!(
        dir.join("FORMULA.md").exists(),
        "reference fixtures not found at {}: they live in ../shared/fixtures next to the checkout (or set VGG_FIXTURES)",
        dir.display()
    );
    dir
}

pub fn npy(rel: &str) -> vgg::npy::Array {
    vgg::npy::read(&fixtures().join(rel)).unwrap_or_else(|e| panic!("{e}"))
}

pub fn manifest() -> serde_json::Value {
    let s = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest.json");
    serde_json::from_str(&s).expect("manifest is JSON")
}

#[allow(unused_imports)]
pub use vgg::formula::{input as formula_input, s, state_dict as formula_state_dict, tensor as formula};

/// NCHW to NHWC, the layout Keras graphs take.
pub fn to_nhwc(x: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    let mut o = vec![0f32; x.len()];
    for i in 0..n {
        for ch in 0..c {
            for p in 0..h * w {
                o[(i * h * w + p) * c + ch] = x[(i * c + ch) * h * w + p];
            }
        }
    }
    o
}

/// `‖out − ref‖ / ‖ref‖`.
pub fn rel_err(out: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(out.len(), reference.len(), "lengths differ");
    let num: f64 = out.iter().zip(reference).map(|(&a, &b)| (a as f64 - b).powi(2)).sum();
    let den: f64 = reference.iter().map(|b| b * b).sum();
    (num / den).sqrt()
}

pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    vgg::model::to_f32(t.into_data())
}

pub fn argsort_desc(v: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    idx
}

/// The model built into the binary (`--weights fashion-mnist`) and its preprocessing.
pub fn builtin_model() -> vgg::pretrained::Loaded {
    vgg::pretrained::load(
        &vgg::pretrained::WeightsSpec::FashionMnist,
        None,
        vgg::weights::Strict::Yes,
        &vgg::weights::registry::Fetcher::from_env(),
        &burn::tensor::Device::default(),
        &mut |_, _| {},
    )
    .unwrap()
}

/// `<temp>/<prefix>-<pid>`, created, for this test process's files. The first call for a prefix
/// also removes what earlier test processes left under it (directories whose pid no longer runs),
/// so that repeated test runs do not fill the disk.
pub fn scratch(prefix: &str) -> PathBuf {
    static CLEANED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let tmp = std::env::temp_dir();
    let mut cleaned = CLEANED.lock().unwrap_or_else(|e| e.into_inner());
    if !cleaned.iter().any(|p| p == prefix) && std::path::Path::new("/proc/self").exists() {
        cleaned.push(prefix.to_string());
        for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-'));
            let stale = pid.filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())).is_some_and(|pid| {
                pid != std::process::id().to_string() && !std::path::Path::new("/proc").join(pid).exists()
            });
            if stale {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = tmp.join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// Every fixture tolerance is this many times PyTorch's own float32 error on the same quantity.
///
/// The fixtures are float64; float32 cannot reach them, and how far it lands depends on the
/// summation order (a max-pool window whose two values differ by less than the rounding picks
/// either). PyTorch's own error, measured by `bench/fixture_f32_errors.sh` and committed in
/// `bench/fixture_f32_errors.json`, is the yardstick; 4x leaves room for another order of the same
/// sums (the engine's Winograd and blocked GEMMs land at up to 2.5x it, the burn path below it).
pub const TORCH_F32_FACTOR: f64 = 4.0;

/// PyTorch's float32 relative error on fixture quantity `key` (a key of `bench/fixture_f32_errors.json`).
pub fn torch_f32_error(key: &str) -> f64 {
    static MEASURED: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    let measured = MEASURED.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/fixture_f32_errors.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).expect("fixture_f32_errors.json is JSON")
    });
    measured["max"][key].as_f64().unwrap_or_else(|| panic!("no PyTorch float32 measurement for {key}"))
}

/// The tolerance for fixture quantity `key`: [`TORCH_F32_FACTOR`] times PyTorch's float32 error.
pub fn torch_f32_tolerance(key: &str) -> f64 {
    TORCH_F32_FACTOR * torch_f32_error(key)
}

/// Asserts `err` (ours, relative to the float64 fixture) is within [`torch_f32_tolerance`] of
/// `key`, printing ours, PyTorch's and the tolerance.
pub fn assert_near_torch_f32(what: &str, key: &str, err: f64) {
    let torch = torch_f32_error(key);
    let tolerance = torch_f32_tolerance(key);
    println!("{what}: relative error {err:.2e} (PyTorch f32 {torch:.2e}, tolerance {tolerance:.2e})");
    assert!(err < tolerance, "{what}: relative error {err:e} over {TORCH_F32_FACTOR}x PyTorch's float32 {torch:e}");
}

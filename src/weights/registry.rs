//! torchvision's published VGG weights, by name (`torchvision:vgg16`), fetched once into a cache.
//!
//! The cache is `$VGG_CACHE_DIR`, else `$XDG_CACHE_HOME/vgg`, else `~/.cache/vgg`. Files are
//! checked against the sha256 prefix torchvision puts in their names (`vgg16-397923af.pth`), and
//! written under a temporary name until the check passes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::WeightsError;
use crate::config::{Head, VggConfig};
use crate::file::FileError;
use crate::image::Normalize;

/// A set of published weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pretrained {
    /// Name after `torchvision:`.
    pub name: &'static str,
    /// Architecture they fit.
    pub arch: &'static str,
    /// Download address.
    pub url: &'static str,
    /// ImageNet-1k top-1 accuracy as torchvision reports it (`None` for features-only weights).
    pub acc1: Option<f64>,
    /// Top-5 accuracy.
    pub acc5: Option<f64>,
    /// Whether the file holds only the trunk (`features.*`).
    pub features_only: bool,
}

const BASE: &str = "https://download.pytorch.org/models/";

/// Every published set, as torchvision's `VGG*_Weights` enums list them.
pub const REGISTRY: [Pretrained; 9] = [
    // VGG11_Weights.IMAGENET1K_V1: acc@1 69.020, acc@5 88.628
    Pretrained {
        name: "vgg11",
        arch: "vgg11",
        url: "https://download.pytorch.org/models/vgg11-8a719046.pth",
        acc1: Some(69.020),
        acc5: Some(88.628),
        features_only: false,
    },
    // VGG11_BN_Weights.IMAGENET1K_V1: acc@1 70.370, acc@5 89.810
    Pretrained {
        name: "vgg11_bn",
        arch: "vgg11_bn",
        url: "https://download.pytorch.org/models/vgg11_bn-6002323d.pth",
        acc1: Some(70.370),
        acc5: Some(89.810),
        features_only: false,
    },
    // VGG13_Weights.IMAGENET1K_V1: acc@1 69.928, acc@5 89.246
    Pretrained {
        name: "vgg13",
        arch: "vgg13",
        url: "https://download.pytorch.org/models/vgg13-19584684.pth",
        acc1: Some(69.928),
        acc5: Some(89.246),
        features_only: false,
    },
    // VGG13_BN_Weights.IMAGENET1K_V1: acc@1 71.586, acc@5 90.374
    Pretrained {
        name: "vgg13_bn",
        arch: "vgg13_bn",
        url: "https://download.pytorch.org/models/vgg13_bn-abd245e5.pth",
        acc1: Some(71.586),
        acc5: Some(90.374),
        features_only: false,
    },
    // VGG16_Weights.IMAGENET1K_V1: acc@1 71.592, acc@5 90.382
    Pretrained {
        name: "vgg16",
        arch: "vgg16",
        url: "https://download.pytorch.org/models/vgg16-397923af.pth",
        acc1: Some(71.592),
        acc5: Some(90.382),
        features_only: false,
    },
    // VGG16_Weights.IMAGENET1K_FEATURES: the trunk ported from the original Caffe model (amdegroot);
    // expects 0–255 inputs with the mean subtracted (see `preprocess`).
    Pretrained {
        name: "vgg16_features",
        arch: "vgg16",
        url: "https://download.pytorch.org/models/vgg16_features-amdegroot-88682ab5.pth",
        acc1: None,
        acc5: None,
        features_only: true,
    },
    // VGG16_BN_Weights.IMAGENET1K_V1: acc@1 73.360, acc@5 91.516
    Pretrained {
        name: "vgg16_bn",
        arch: "vgg16_bn",
        url: "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth",
        acc1: Some(73.360),
        acc5: Some(91.516),
        features_only: false,
    },
    // VGG19_Weights.IMAGENET1K_V1: acc@1 72.376, acc@5 90.876
    Pretrained {
        name: "vgg19",
        arch: "vgg19",
        url: "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        acc1: Some(72.376),
        acc5: Some(90.876),
        features_only: false,
    },
    // VGG19_BN_Weights.IMAGENET1K_V1: acc@1 74.218, acc@5 91.842
    Pretrained {
        name: "vgg19_bn",
        arch: "vgg19_bn",
        url: "https://download.pytorch.org/models/vgg19_bn-c79401a0.pth",
        acc1: Some(74.218),
        acc5: Some(91.842),
        features_only: false,
    },
];

/// All names, as `torchvision:NAME`.
pub fn names() -> Vec<String> {
    REGISTRY.iter().map(|p| format!("torchvision:{}", p.name)).collect()
}

/// Looks up `torchvision:vgg16` (the prefix is optional).
pub fn lookup(name: &str) -> Result<&'static Pretrained, WeightsError> {
    let bare = name.strip_prefix("torchvision:").unwrap_or(name);
    REGISTRY.iter().find(|p| p.name == bare).ok_or_else(|| WeightsError::UnknownName(name.to_string()))
}

impl Pretrained {
    /// The file name, e.g. `vgg16-397923af.pth`.
    pub fn file_name(&self) -> &'static str {
        self.url.rsplit('/').next().expect("url has a file name")
    }

    /// The sha256 prefix torchvision embeds in the file name (`397923af`).
    pub fn sha256_prefix(&self) -> &'static str {
        hash_prefix_of(self.file_name()).expect("registry names carry a hash")
    }

    /// The architecture these weights fit.
    pub fn config(&self) -> VggConfig {
        let c = VggConfig::from_arch(self.arch).expect("registry arch is valid");
        if self.features_only { c.with_head(Head::None) } else { c }
    }

    /// The preprocessing these weights were trained with.
    pub fn normalize(&self) -> Normalize {
        if self.features_only { Normalize::amdegroot() } else { Normalize::imagenet() }
    }

    /// The download address under another base (a mirror, or a test server).
    pub fn url_with_base(&self, base: &str) -> String {
        if base == BASE { self.url.to_string() } else { format!("{}/{}", base.trim_end_matches('/'), self.file_name()) }
    }
}

/// The hex hash prefix after the last `-` of a file name (`vgg16-397923af.pth` → `397923af`).
pub fn hash_prefix_of(file_name: &str) -> Option<&str> {
    let stem = file_name.split('.').next()?;
    let h = stem.rsplit('-').next()?;
    (h.len() >= 6 && h.chars().all(|c| c.is_ascii_hexdigit())).then_some(h)
}

/// Where weights are cached and fetched from.
#[derive(Debug, Clone)]
pub struct Fetcher {
    /// Cache directory.
    pub cache_dir: PathBuf,
    /// Base URL (`https://download.pytorch.org/models/`, or `$VGG_WEIGHTS_BASE_URL`).
    pub base_url: String,
}

impl Fetcher {
    /// The cache and base URL from the environment.
    pub fn from_env() -> Self {
        let cache_dir = std::env::var_os("VGG_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("vgg")))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("vgg")))
            .unwrap_or_else(|| PathBuf::from(".vgg-cache"));
        let base_url = std::env::var("VGG_WEIGHTS_BASE_URL").unwrap_or_else(|_| BASE.to_string());
        Self { cache_dir, base_url }
    }

    /// Where a registry entry lives in the cache.
    pub fn path_of(&self, p: &Pretrained) -> PathBuf {
        self.cache_dir.join(p.file_name())
    }

    /// The cached file of `name`, downloading and verifying it first if needed.
    pub fn get(&self, name: &str, progress: &mut dyn FnMut(u64, Option<u64>)) -> Result<PathBuf, WeightsError> {
        let p = lookup(name)?;
        let dest = self.path_of(p);
        if dest.exists() {
            return Ok(dest);
        }
        download(&p.url_with_base(&self.base_url), &dest, Some(p.sha256_prefix()), progress)?;
        Ok(dest)
    }
}

/// Downloads `url` to `dest`, checking the sha256 prefix when given. The file appears under its
/// final name only once complete and verified.
pub fn download(
    url: &str,
    dest: &Path,
    sha256_prefix: Option<&str>,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<(), WeightsError> {
    let fail = |what: String| WeightsError::Download { url: url.to_string(), dest: dest.display().to_string(), what };
    let io = |err| WeightsError::File(FileError::Io { path: dest.display().to_string(), err });
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut resp = ureq::get(url).call().map_err(|e| fail(e.to_string()))?;
    let total = resp.body().content_length();
    let mut reader = resp.body_mut().as_reader();
    let tmp = dest.with_extension("partial");
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut done = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(fail(format!("connection broke after {done} bytes: {e}")));
            }
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(io)?;
        done += n as u64;
        progress(done, total);
    }
    file.sync_all().map_err(io)?;
    drop(file);
    if let Some(t) = total
        && t != done
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(format!("expected {t} bytes, got {done}")));
    }
    let got = hex(&hasher.finalize());
    if let Some(want) = sha256_prefix
        && !got.starts_with(&want.to_ascii_lowercase())
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(WeightsError::Checksum {
            path: dest.display().to_string(),
            expected: want.to_string(),
            got: got[..want.len().min(got.len())].to_string(),
        });
    }
    std::fs::rename(&tmp, dest).map_err(io)
}

/// sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, WeightsError> {
    let bytes = crate::file::read(path)?;
    Ok(hex(&Sha256::digest(&bytes)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registry_name_carries_a_hash_and_a_valid_arch() {
        for p in REGISTRY {
            assert_eq!(p.sha256_prefix().len(), 8, "{}", p.name);
            assert!(p.url.starts_with(BASE));
            let c = p.config();
            assert_eq!(c.arch_name(), p.arch);
        }
        assert_eq!(lookup("torchvision:vgg16").unwrap().sha256_prefix(), "397923af");
        assert!(matches!(lookup("torchvision:vgg17"), Err(WeightsError::UnknownName(_))));
    }
}

//! `vgg lpips`

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use vgg::config::{Head, VggConfig};
use vgg::engine::Engine;
use vgg::explain::jet;
use vgg::perceptual::pairs::{Pair, load, pairs};
use vgg::perceptual::{Heads, Lpips};

#[derive(Args, Debug)]
pub struct LpipsArgs {
    /// An image, or a folder of images.
    a: PathBuf,
    /// The image to compare it with, or a folder with a file of the same name for each of A's.
    b: PathBuf,
    /// Resize both images to SIZE x SIZE (bilinear) first; without it, images of different sizes
    /// are refused.
    #[arg(long)]
    size: Option<usize>,
    /// The lpips=False variant: unweighted distance of the normalised features.
    #[arg(long)]
    baseline: bool,
    /// Also write each pair's per-pixel map: a heat-map PNG and a .npy of the values. For two
    /// files, the PNG's path (the .npy beside it); for two folders, a folder for NAME.png and
    /// NAME.npy.
    #[arg(long)]
    spatial: Option<PathBuf>,
    /// The VGG-16 trunk: torchvision:vgg16 (what lpips uses; downloaded where there is a network),
    /// a file, or formula/random (with --arch vgg16).
    #[arg(long, default_value = "torchvision:vgg16")]
    weights: String,
    /// Architecture for --weights formula or random.
    #[arg(long)]
    arch: Option<String>,
    /// Linear heads other than lpips 0.1.4's own (a vgg.pth or safetensors with lpips's keys).
    #[arg(long)]
    lin: Option<PathBuf>,
    /// Pairs in one forward pass at most (pairs of one size are batched).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// One JSON object per pair: {"a": PATH, "b": PATH, "lpips": VALUE}.
    #[arg(long)]
    json: bool,
}

pub fn run(a: LpipsArgs) -> Result<()> {
    if a.size == Some(0) || a.batch == 0 {
        bail!("--size and --batch must be positive");
    }
    let list = pairs(&a.a, &a.b)?;
    let folders = a.a.is_dir();
    if let Some(dir) = a.spatial.as_ref().filter(|_| folders) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let config = match a.arch.as_deref() {
        Some(arch) => Some(VggConfig::from_arch(arch)?),
        None if matches!(a.weights.as_str(), "random" | "formula") => Some(VggConfig::from_arch("vgg16")?),
        None => None,
    };
    let w = super::read_weights_for(&a.weights, config)?;
    let mut trunk = w.config.clone();
    trunk.head = Head::None;
    let engine = Engine::from_state_dict_any_head(&trunk, w.state_dict)
        .with_context(|| format!("LPIPS runs on the fast CPU engine; loading {}", w.source))?;
    let heads = match (&a.lin, a.baseline) {
        (Some(_), true) => bail!("--lin and --baseline exclude each other"),
        (Some(p), false) => Heads::from_state_dict(&vgg::weights::load_file(p)?)?,
        (None, false) => Heads::v0_1(),
        (None, true) => Heads::None,
    };
    let lpips = Lpips::new(&engine, heads)?;

    // Read every image first, so that a bad file stops the run before any compute.
    let mut loaded = Vec::with_capacity(list.len());
    for pair in &list {
        let (x, sa) = load(&pair.a, a.size)?;
        let (y, sb) = load(&pair.b, a.size)?;
        if sa != sb {
            bail!(
                "{} is {}x{} but {} is {}x{}: give --size N to resize both to NxN",
                pair.a.display(),
                sa[1],
                sa[0],
                pair.b.display(),
                sb[1],
                sb[0]
            );
        }
        loaded.push((x, y, sa));
    }
    let bar = if list.len() > 1 && !a.json {
        ProgressBar::new(list.len() as u64).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} pairs {per_sec} eta {eta}").expect("valid template"),
        )
    } else {
        ProgressBar::hidden()
    };
    let start = Instant::now();
    let mut values = vec![0f64; list.len()];
    // Pairs of one size, in batches of at most --batch, in the order given.
    let mut todo: Vec<usize> = (0..list.len()).collect();
    while let Some(&first) = todo.first() {
        let size = loaded[first].2;
        let group: Vec<usize> = todo.iter().copied().filter(|&i| loaded[i].2 == size).take(a.batch).collect();
        todo.retain(|i| !group.contains(i));
        let (xa, xb): (Vec<f32>, Vec<f32>) = (
            group.iter().flat_map(|&i| loaded[i].0.iter().copied()).collect(),
            group.iter().flat_map(|&i| loaded[i].1.iter().copied()).collect(),
        );
        let dims = [group.len(), 3, size[0], size[1]];
        for (&i, d) in group.iter().zip(lpips.distance(&xa, &xb, dims)?) {
            values[i] = d.value;
        }
        if let Some(out) = &a.spatial {
            let maps = lpips.spatial(&xa, &xb, dims)?;
            for (&i, map) in group.iter().zip(maps.chunks_exact(size[0] * size[1])) {
                write_map(&spatial_path(out, &list[i], folders), map, size)?;
            }
        }
        bar.inc(group.len() as u64);
    }
    bar.finish_and_clear();
    for (pair, value) in list.iter().zip(&values) {
        if a.json {
            println!(
                "{}",
                serde_json::json!({"a": pair.a.display().to_string(), "b": pair.b.display().to_string(), "lpips": value})
            );
        } else {
            println!("{}  {}  {value:.6}", pair.a.display(), pair.b.display());
        }
    }
    if !a.json && list.len() > 1 {
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let secs = start.elapsed().as_secs_f64();
        eprintln!("mean {mean:.6} over {} pairs in {secs:.1} s ({:.2} pairs/s)", list.len(), list.len() as f64 / secs);
    }
    Ok(())
}

/// Where a pair's map goes: the PNG path given (two files), or NAME.png in the folder given.
fn spatial_path(out: &Path, pair: &Pair, folders: bool) -> PathBuf {
    if folders {
        let stem = pair.a.file_stem().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("pair"));
        out.join(stem).with_extension("png")
    } else {
        out.to_path_buf()
    }
}

/// The map as a jet heat map (0 blue, its maximum red) and as `.npy` `[h, w]` beside it.
fn write_map(png: &Path, map: &[f32], [h, w]: [usize; 2]) -> Result<()> {
    let top = map.iter().fold(0f32, |m, &v| m.max(v));
    let scale = if top > 0.0 { 1.0 / top } else { 0.0 };
    let rgb: Vec<u8> = map.iter().flat_map(|&v| jet(v * scale)).collect();
    image::RgbImage::from_raw(w as u32, h as u32, rgb)
        .context("heat map size")?
        .save(png)
        .with_context(|| format!("writing {}", png.display()))?;
    let npy = png.with_extension("npy");
    std::fs::write(&npy, vgg::npy::to_bytes(&[h, w], map)).with_context(|| format!("writing {}", npy.display()))?;
    Ok(())
}

//! `vgg style`

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use vgg::config::{Head, VggConfig};
use vgg::engine::Engine;
use vgg::image::{Filter, Normalize, Rgb8};
use vgg::style::{Image, Objective, Optimizer, StyleConfig, transfer};

#[derive(Args, Debug)]
pub struct StyleArgs {
    /// The picture whose content is kept.
    content: PathBuf,
    /// The picture whose style is painted over it.
    style: PathBuf,
    /// The result (PNG).
    #[arg(long)]
    out: PathBuf,
    /// Longer side of the result (the style image is scaled to the same longer side).
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// Loss evaluations (one forward and backward pass each).
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Layer of the content loss.
    #[arg(long, default_value = "conv4_2")]
    content_layer: String,
    /// Layers of the style loss.
    #[arg(long, value_delimiter = ',', default_value = "conv1_1,conv2_1,conv3_1,conv4_1,conv5_1")]
    style_layers: Vec<String>,
    /// Weight of the style loss.
    #[arg(long, default_value_t = 1e6)]
    style_weight: f64,
    /// Weight of the content loss.
    #[arg(long, default_value_t = 1.0)]
    content_weight: f64,
    /// lbfgs (Gatys et al.) or adam.
    #[arg(long, default_value = "lbfgs")]
    optimizer: String,
    /// Step size (default: 1 for L-BFGS, 0.02 for Adam).
    #[arg(long)]
    lr: Option<f64>,
    /// Replace max-pooling by average pooling, as the paper suggests.
    #[arg(long)]
    avg_pool: bool,
    /// Start from white noise instead of the content image.
    #[arg(long)]
    from_noise: bool,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the image every N steps (OUT with -stepN before the extension).
    #[arg(long)]
    every: Option<usize>,
    /// Architecture (vgg19 for --weights random or formula; otherwise what the weights record).
    #[arg(long)]
    arch: Option<String>,
    /// torchvision:vgg19 (downloaded where there is a network), a file, fashion-mnist (the
    /// built-in gray model: gray pictures), or random.
    #[arg(long, default_value = "torchvision:vgg19")]
    weights: String,
    /// Also draw content, style and result side by side, captioned, on one PNG.
    #[arg(long)]
    sheet: Option<PathBuf>,
    /// Print a JSON summary at the end.
    #[arg(long)]
    json: bool,
}

pub fn run(a: StyleArgs) -> Result<()> {
    if a.size < 16 {
        bail!("--size must be at least 16");
    }
    if a.steps == 0 {
        bail!("--steps must be positive");
    }
    let config = match a.arch.as_deref() {
        Some(arch) => Some(VggConfig::from_arch(arch)?),
        None if matches!(a.weights.as_str(), "random" | "formula") => Some(VggConfig::from_arch("vgg19")?),
        None => None,
    };
    let w = super::read_weights_for(&a.weights, config)?;
    let arch = w.config.arch_name();
    let (mean, std) = match w.preprocess.normalize {
        Normalize::MeanStd { mean, std } => (mean.to_vec(), std.to_vec()),
        // A gray network (the built-in Fashion-MNIST model) paints gray pictures.
        Normalize::Gray { mean, std } => (vec![mean], vec![std]),
        other => bail!("style transfer needs weights normalised by mean and std, not {other:?}"),
    };
    let mut trunk = w.config.clone();
    trunk.head = Head::None;
    // The engine takes the trunk's tensors over; a head's are ignored.
    let mut engine = Engine::from_state_dict_any_head(&trunk, w.state_dict)
        .with_context(|| format!("style transfer runs on the fast CPU engine; loading {}", w.source))?;
    if a.avg_pool {
        engine.use_average_pooling();
    }
    let content = load(&a.content, a.size, mean.len())?;
    let style = load(&a.style, a.size, mean.len())?;
    let optimizer = match a.optimizer.as_str() {
        "lbfgs" | "l-bfgs" => Optimizer::Lbfgs { lr: a.lr.unwrap_or(1.0) },
        "adam" => Optimizer::Adam { lr: a.lr.unwrap_or(0.02) },
        other => bail!("unknown optimizer '{other}' (expected lbfgs or adam)"),
    };
    let cfg = StyleConfig {
        content_layer: a.content_layer.clone(),
        style_layers: a.style_layers.clone(),
        content_weight: a.content_weight,
        style_weight: a.style_weight,
        steps: a.steps,
        optimizer,
        from_noise: a.from_noise,
        seed: a.seed,
    };
    let obj = Objective::new(&engine, &content, &style, &cfg, &mean, &std)?;
    let bar = ProgressBar::new(a.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps {per_sec} eta {eta} | {msg}").expect("valid template"),
    );
    let start = Instant::now();
    let mut write_error = None;
    let (result, losses) = transfer(&obj, &content, &cfg, &mut |step, l, img| {
        bar.set_position(step as u64);
        bar.set_message(format!("content {:.3e} style {:.3e} total {:.3e}", l.content, l.style, l.total()));
        if let Some(n) = a.every
            && n > 0
            && step % n == 0
            && let Err(e) = save(&step_path(&a.out, step), img)
        {
            write_error.get_or_insert(e);
        }
    })?;
    bar.finish_and_clear();
    if let Some(e) = write_error {
        return Err(e);
    }
    save(&a.out, &result)?;
    if let Some(p) = &a.sheet {
        save_sheet(p, &content, &style, &result)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let [h, w] = result.size;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "out": a.out.display().to_string(), "size": [h, w], "steps": a.steps, "seconds": secs,
                "content_loss": losses.content, "style_loss": losses.style, "arch": arch, "weights": a.weights,
            })
        );
    } else {
        println!(
            "{} ({w}x{h}) in {secs:.1} s ({} steps, {:.2} s/step): content {:.4e}, style {:.4e}",
            a.out.display(),
            a.steps,
            secs / a.steps as f64,
            losses.content,
            losses.style
        );
    }
    Ok(())
}

/// Reads an image and scales it so that its longer side is `size`, as RGB planes or (`channels`
/// = 1) as gray with the luma the gray networks were trained on.
fn load(path: &Path, size: usize, channels: usize) -> Result<Image> {
    let img = vgg::image::open(path)?;
    let s = size as f64 / img.width.max(img.height) as f64;
    let (w, h) = (((img.width as f64 * s).round() as usize).max(1), ((img.height as f64 * s).round() as usize).max(1));
    let img = vgg::image::resize(&img, w, h, Filter::Bilinear);
    let plane = w * h;
    let data = if channels == 1 {
        let t = vgg::image::to_tensor(&img, &Normalize::Gray { mean: 0.0, std: 1.0 });
        t.data
    } else {
        let mut data = vec![0f32; 3 * plane];
        for p in 0..plane {
            for c in 0..3 {
                data[c * plane + p] = img.data[p * 3 + c] as f32 / 255.0;
            }
        }
        data
    };
    Ok(Image { size: [h, w], data })
}

fn to_rgb8(img: &Image) -> Rgb8 {
    let [h, w] = img.size;
    let plane = h * w;
    let channels = img.channels();
    let mut rgb = Rgb8 { width: w, height: h, data: vec![0u8; plane * 3] };
    for p in 0..plane {
        for c in 0..3 {
            let v = img.data[c.min(channels - 1) * plane + p];
            rgb.data[p * 3 + c] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    rgb
}

fn save(path: &Path, img: &Image) -> Result<()> {
    let rgb = to_rgb8(img);
    image::save_buffer(path, &rgb.data, rgb.width as u32, rgb.height as u32, image::ExtendedColorType::Rgb8)
        .with_context(|| format!("writing {}", path.display()))
}

/// Content, style (stretched to the content's size) and result in a row.
fn save_sheet(path: &Path, content: &Image, style: &Image, result: &Image) -> Result<()> {
    let [h, w] = content.size;
    let style = vgg::image::resize(&to_rgb8(style), w, h, Filter::Bilinear);
    let tiles = [(to_rgb8(content).data, "content"), (style.data, "style"), (to_rgb8(result).data, "result")];
    let tiles: Vec<(Vec<u8>, String)> = tiles.into_iter().map(|(d, t)| (d, t.to_string())).collect();
    vgg::plot::image_sheet(&tiles, [h, w], 3).save(path).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}

fn step_path(out: &Path, step: usize) -> PathBuf {
    let stem = out.file_stem().map_or("style".into(), |s| s.to_string_lossy().to_string());
    out.with_file_name(format!("{stem}-step{step}.png"))
}

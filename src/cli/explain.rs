//! `vgg explain`

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use vgg::engine::Engine;
use vgg::explain::{Method, explain, overlay};
use vgg::image::Rgb8;
use vgg::weights::Strict;

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// PNG or JPEG files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// gradcam or saliency.
    #[arg(long, default_value = "gradcam")]
    method: String,
    /// Grad-CAM's layer (default: the trunk's last ReLU, relu5_3 for VGG-16).
    #[arg(long)]
    layer: Option<String>,
    /// Explain this class index (default: each image's top-1 class).
    #[arg(long)]
    class: Option<usize>,
    /// Output: a PNG file for one image, or a directory (made if absent) receiving
    /// STEM-METHOD.png per image.
    #[arg(long)]
    out: PathBuf,
    /// Also write the map at the input's resolution, unnormalised, as .npy next to each PNG.
    #[arg(long)]
    raw: bool,
    /// Images per forward/backward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Class names, one per line (default: ImageNet's, or Fashion-MNIST's for the built-in model).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Also draw every overlay, captioned with its class and probability, on one PNG sheet.
    #[arg(long)]
    sheet: Option<PathBuf>,
    /// Overlays per row of the sheet.
    #[arg(long, default_value_t = 5)]
    sheet_columns: usize,
    /// One JSON object per image.
    #[arg(long)]
    json: bool,
}

pub fn run(a: ExplainArgs) -> Result<()> {
    let w = a.model.weights()?;
    let config = w.config.clone();
    // Gradients with respect to the input are the engine's: it takes the tensors over.
    let engine = Engine::load(&config, w.state_dict, Strict::Yes, None)
        .with_context(|| format!("explanations run on the fast CPU engine; loading {}", w.source))?;
    let preprocess = w.preprocess;
    let labels = super::class_names(&config, a.labels.as_deref())?;
    let method = match a.method.as_str() {
        "gradcam" | "grad-cam" => Method::GradCam {
            layer: match &a.layer {
                Some(l) => l.clone(),
                None => engine.last_trunk_relu().context("the network has no ReLU in its trunk")?.to_string(),
            },
        },
        "saliency" => {
            if a.layer.is_some() {
                bail!("--layer is for Grad-CAM; saliency is always at the input");
            }
            Method::Saliency
        }
        other => bail!("unknown method '{other}' (expected gradcam or saliency)"),
    };
    let method_name = if matches!(method, Method::Saliency) { "saliency" } else { "gradcam" };
    let single_file = a.images.len() == 1 && a.out.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !single_file {
        std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    }
    // Decode everything first: a bad file is reported without losing the others.
    let mut items = Vec::new();
    let mut failed = 0;
    for path in &a.images {
        let prepared = vgg::image::open(path).and_then(|img| {
            let view = preprocess.geometry(&img)?;
            let x = preprocess.apply(&img)?;
            Ok((view, x))
        });
        match prepared {
            Ok((view, x)) => items.push((path.clone(), view, x)),
            Err(e) => {
                failed += 1;
                eprintln!("error: {}: {e}", path.display());
            }
        }
    }
    let mut sheet: Vec<(Vec<u8>, String)> = Vec::new();
    let mut sheet_size = None;
    let mut i = 0;
    while i < items.len() {
        // A batch of consecutive images of one shape.
        let shape = items[i].2.shape;
        let mut j = i + 1;
        while j < items.len() && j - i < a.batch.max(1) && items[j].2.shape == shape {
            j += 1;
        }
        let group = &items[i..j];
        let [c, h, w] = shape;
        let x: Vec<f32> = group.iter().flat_map(|(_, _, t)| t.data.iter().copied()).collect();
        let classes = a.class.map(|k| vec![k]);
        let maps = explain(&engine, &x, [group.len(), c, h, w], &method, classes.as_deref())?;
        for ((path, view, _), e) in group.iter().zip(maps) {
            let png = if single_file {
                a.out.clone()
            } else {
                let stem = path.file_stem().map_or("image".into(), |s| s.to_string_lossy().to_string());
                a.out.join(format!("{stem}-{method_name}.png"))
            };
            let (scaled, size) = display(view, &e.map, e.size);
            let picture = overlay(&scaled.0, &scaled.1);
            write_png(&png, &picture, size)?;
            let raw = if a.raw {
                let p = png.with_extension("npy");
                std::fs::write(&p, vgg::npy::to_bytes(&e.size, &e.map))
                    .with_context(|| format!("writing {}", p.display()))?;
                Some(p)
            } else {
                None
            };
            let label = labels.get(e.class).cloned().unwrap_or_else(|| format!("class {}", e.class));
            if a.sheet.is_some() && *sheet_size.get_or_insert(size) == size {
                sheet.push((picture, format!("{label} {:.0}%", e.probability * 100.0)));
            }
            if a.json {
                let mut o = serde_json::json!({
                    "image": path.display().to_string(),
                    "method": method_name,
                    "class": e.class,
                    "label": label,
                    "probability": e.probability,
                    "score": e.score,
                    "map_size": e.layer_size,
                    "out": png.display().to_string(),
                });
                if let Method::GradCam { layer } = &method {
                    o["layer"] = layer.clone().into();
                }
                if let Some(r) = &raw {
                    o["raw"] = r.display().to_string().into();
                }
                println!("{o}");
            } else {
                let at = match &method {
                    Method::GradCam { layer } => {
                        format!("Grad-CAM at {layer} ({}x{})", e.layer_size[0], e.layer_size[1])
                    }
                    Method::Saliency => "saliency".into(),
                };
                println!("{}: {label} ({:.2}%), {at} -> {}", path.display(), e.probability * 100.0, png.display());
            }
        }
        i = j;
    }
    if let (Some(path), Some(size)) = (&a.sheet, sheet_size) {
        vgg::plot::image_sheet(&sheet, size, a.sheet_columns)
            .save(path)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        if sheet.len() < items.len() {
            eprintln!("note: the sheet holds the {} overlays of the first image's size", sheet.len());
        }
    }
    if failed > 0 {
        bail!("{failed} of {} images could not be read", a.images.len());
    }
    Ok(())
}

/// The view and the map enlarged (by an integer factor, pixels as blocks) so that small inputs
/// such as 32x32 Fashion-MNIST give a picture one can look at: at least 256 pixels on the shorter
/// side.
fn display(view: &Rgb8, map: &[f32], [h, w]: [usize; 2]) -> ((Vec<u8>, Vec<f32>), [usize; 2]) {
    let f = 256usize.div_ceil(h.min(w).max(1)).max(1);
    if f == 1 {
        return ((view.data.clone(), map.to_vec()), [h, w]);
    }
    let (oh, ow) = (h * f, w * f);
    let mut rgb = Vec::with_capacity(oh * ow * 3);
    for y in 0..oh {
        for x in 0..ow {
            let s = (y / f) * w + x / f;
            rgb.extend_from_slice(&view.data[s * 3..s * 3 + 3]);
        }
    }
    // The map is smooth: resample it bilinearly rather than in blocks.
    let big = vgg::explain::upsample(map, [h, w], [oh, ow]);
    ((rgb, big), [oh, ow])
}

fn write_png(path: &Path, rgb: &[u8], [h, w]: [usize; 2]) -> Result<()> {
    image::save_buffer(path, rgb, w as u32, h as u32, image::ExtendedColorType::Rgb8)
        .with_context(|| format!("writing {}", path.display()))
}

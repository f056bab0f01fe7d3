//! `vgg features`

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use vgg::weights::safetensors::Meta;
use vgg::weights::{Dtype, TensorEntry, safetensors};

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct FeaturesArgs {
    /// A PNG or JPEG file.
    image: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated layer names (paper names such as conv1_1, relu4_2, pool5, fc7, or
    /// torchvision keys such as features.3).
    #[arg(long, value_delimiter = ',', required_unless_present = "grid")]
    layers: Vec<String>,
    /// Draw the first --channels channels of this layer's activation as a grid of tiles; --out is
    /// then a PNG.
    #[arg(long)]
    grid: Option<String>,
    /// Channels in the grid.
    #[arg(long, default_value_t = 64)]
    channels: usize,
    /// Output file: safetensors (the activations, plus the preprocessed image as `input`), or a
    /// PNG with --grid.
    #[arg(long)]
    out: PathBuf,
    /// Print a JSON object describing what was written.
    #[arg(long)]
    json: bool,
}

pub fn run(a: FeaturesArgs) -> Result<()> {
    let loaded = a.model.load(false)?;
    let model = &loaded.model;
    let img = loaded.preprocess.load(&a.image)?;
    let [c, h, w] = img.shape;
    model.check_input([1, c, h, w])?;
    if let Some(layer) = &a.grid {
        let acts = vgg::features::extract(model, img.to_tensor(&model.devices()), &[layer.as_str()])?;
        let t = &acts[layer.as_str()];
        let [c, h, w] = match t.shape.as_slice() {
            [_, c, h, w] => [*c, *h, *w],
            [_, f] => [*f, 1, 1],
            s => bail!("{layer} has shape {s:?}, not a feature map"),
        };
        vgg::plot::feature_grid(&t.data, [c, h, w], a.channels)
            .save(&a.out)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", a.out.display()))?;
        println!(
            "{} {layer} ({c}x{h}x{w}, first {} channels) -> {}",
            a.image.display(),
            a.channels.min(c),
            a.out.display()
        );
        return Ok(());
    }
    let names: Vec<&str> = a.layers.iter().map(String::as_str).collect();
    if names.is_empty() {
        bail!("--layers is empty");
    }
    let mut acts = vgg::features::extract(model, img.to_tensor(&model.devices()), &names)?;
    // The tensor the network saw, so that another runtime can be fed exactly the same.
    acts.entry("input".into()).or_insert_with(|| TensorEntry::f32(vec![1, c, h, w], img.data.clone()));
    let meta = Meta {
        config: Some(model.config().clone()),
        preprocess: Some(loaded.preprocess.clone()),
        extra: vec![("vgg.image".into(), a.image.display().to_string())],
    };
    safetensors::write(&a.out, &acts, &meta, Dtype::F32)?;
    let rows: Vec<_> = names
        .iter()
        .map(|n| {
            let t = &acts[*n];
            let mean = t.data.iter().map(|&v| v as f64).sum::<f64>() / t.data.len() as f64;
            let max = t.data.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let min = t.data.iter().cloned().fold(f32::INFINITY, f32::min);
            (n.to_string(), t.shape.clone(), min, max, mean)
        })
        .collect();
    if a.json {
        let layers: Vec<_> = rows
            .iter()
            .map(|(n, s, min, max, mean)| serde_json::json!({"name": n, "shape": s, "min": min, "max": max, "mean": mean}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"image": a.image.display().to_string(), "out": a.out.display().to_string(), "layers": layers})
        );
    } else {
        println!("{} -> {}", a.image.display(), a.out.display());
        for (n, s, min, max, mean) in rows {
            let shape = s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
            println!("  {n:<10} {shape:<16} min {min:>10.4}  max {max:>10.4}  mean {mean:>10.4}");
        }
    }
    Ok(())
}

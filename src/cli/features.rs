//! `vgg features`

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use vgg::weights::safetensors::Meta;
use vgg::weights::{Dtype, TensorEntry, safetensors};

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct FeaturesArgs {
    /// PNG or JPEG files (one with --grid). Several are stacked along the batch dimension, in order,
    /// in one --out file; under mpirun the processes share them out.
    #[arg(required = true)]
    images: Vec<PathBuf>,
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
    #[command(flatten)]
    mpi: super::parallel::MpiArgs,
}

pub fn run(a: FeaturesArgs) -> Result<()> {
    let group = a.mpi.group()?;
    let loaded = a.model.load(false)?;
    let model = &loaded.model;
    if let Some(layer) = &a.grid {
        let [image] = a.images.as_slice() else { bail!("--grid draws one image; {} were given", a.images.len()) };
        let img = loaded.preprocess.load(image)?;
        let [c, h, w] = img.shape;
        model.check_input([1, c, h, w])?;
        if !group.is_root() {
            return Ok(());
        }
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
            image.display(),
            a.channels.min(c),
            a.out.display()
        );
        return Ok(());
    }
    let names: Vec<&str> = a.layers.iter().map(String::as_str).collect();
    if names.is_empty() {
        bail!("--layers is empty");
    }
    // Each process takes every size-th image; rank 0 gathers them in order (one process: all).
    let mine = vgg::dist::batches_of(a.images.len(), 1, group.rank(), group.size());
    let mut rows = Vec::with_capacity(mine.len());
    for &i in &mine {
        let img = loaded.preprocess.load(&a.images[i])?;
        let [c, h, w] = img.shape;
        model.check_input([1, c, h, w]).with_context(|| a.images[i].display().to_string())?;
        let mut acts = vgg::features::extract(model, img.to_tensor(&model.devices()), &names)?;
        // The tensor the network saw, so that another runtime can be fed exactly the same.
        acts.entry("input".into()).or_insert_with(|| TensorEntry::f32(vec![1, c, h, w], img.data.clone()));
        rows.push((i, Row::from(acts)));
    }
    let rows: Vec<_> = vgg::dist::gather_ordered(&*group, 0, rows).into_iter().map(Row::into_state_dict).collect();
    if !group.is_root() {
        return Ok(());
    }
    let acts = vgg::features::stack(&rows)?;
    let image_list = a.images.iter().map(|p| p.display().to_string()).collect::<Vec<_>>();
    let meta = Meta {
        config: Some(model.config().clone()),
        preprocess: Some(loaded.preprocess.clone()),
        extra: vec![match image_list.as_slice() {
            [one] => ("vgg.image".into(), one.clone()),
            all => ("vgg.images".into(), serde_json::to_string(all)?),
        }],
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
        let out = match image_list.as_slice() {
            [one] => serde_json::json!({"image": one, "out": a.out.display().to_string(), "layers": layers}),
            all => serde_json::json!({"images": all, "out": a.out.display().to_string(), "layers": layers}),
        };
        println!("{out}");
    } else {
        let what = match image_list.as_slice() {
            [one] => one.clone(),
            all => format!("{} images", all.len()),
        };
        println!("{what} -> {}", a.out.display());
        for (n, s, min, max, mean) in rows {
            let shape = s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
            println!("  {n:<10} {shape:<16} min {min:>10.4}  max {max:>10.4}  mean {mean:>10.4}");
        }
    }
    Ok(())
}

/// One image's activations as they travel between processes: f32 values as their bits, so that
/// they arrive exactly.
#[derive(serde::Serialize, serde::Deserialize)]
struct Row(Vec<(String, Vec<usize>, Vec<u32>)>);

impl From<vgg::weights::StateDict> for Row {
    fn from(sd: vgg::weights::StateDict) -> Self {
        Row(sd.into_iter().map(|(k, e)| (k, e.shape, e.data.iter().map(|v| v.to_bits()).collect())).collect())
    }
}

impl Row {
    fn into_state_dict(self) -> vgg::weights::StateDict {
        self.0
            .into_iter()
            .map(|(k, shape, bits)| (k, TensorEntry::f32(shape, bits.into_iter().map(f32::from_bits).collect())))
            .collect()
    }
}

//! `vgg convert`

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use vgg::onnx::{OnnxOptions, to_onnx};
use vgg::weights::keys::{KeyStyle, key_pairs, rename};
use vgg::weights::{Dtype, StateDict, is_optimizer_key};

use super::ArchArgs;

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// What to read: a .pth (zip, legacy or training checkpoint), .safetensors, .onnx or Keras .h5 file,
    /// torchvision:NAME, or fashion-mnist (the built-in model).
    input: String,
    /// What to write: .safetensors, .pth, .onnx or .h5 (Keras weights; or --to).
    output: PathBuf,
    /// safetensors, pth, onnx or h5 (default: from OUTPUT's extension).
    #[arg(long)]
    to: Option<String>,
    /// Storage of floating tensors: f32, f16 or bf16 (safetensors and pth; ONNX is written in f32).
    #[arg(long, default_value = "f32")]
    dtype: Dtype,
    /// torchvision (features.0.weight), paper (conv1_1.weight) or timm (pre_logits.fc1.weight for
    /// the head) keys (safetensors and pth).
    #[arg(long, default_value = "torchvision")]
    keys: KeyStyle,
    /// ONNX: input size, N or HxW (default: the weights' crop, else 224).
    #[arg(long)]
    size: Option<String>,
    /// ONNX: fold BatchNorm into the convolutions.
    #[arg(long)]
    fold_bn: bool,
    #[command(flatten)]
    arch: ArchArgs,
    /// One JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let format = match (&a.to, a.output.extension().and_then(|e| e.to_str())) {
        (Some(f), _) => f.to_lowercase(),
        (None, Some(e)) => e.to_lowercase(),
        (None, None) => bail!("give --to safetensors, pth, onnx or h5, or an OUTPUT with that extension"),
    };
    let (dtype, keys) = (a.dtype, a.keys);
    let w = super::read_weights(&a.arch, Some(&a.input))?;
    for n in &w.notes {
        eprintln!("note: {n}");
    }
    let config = w.config.clone();
    // Checked as a strict load would, and under torchvision's keys from here on.
    let sd: StateDict = vgg::weights::keys::conform(w.state_dict, &config, vgg::weights::Strict::Yes)
        .with_context(|| format!("{} does not fit {}", w.source, config.arch_name()))?
        .into_iter()
        .filter(|(k, _)| !is_optimizer_key(k))
        .collect();
    vgg::weights::keys::check_style(&config, keys).map_err(anyhow::Error::msg)?;
    let plan = config.plan([224, 224]);
    let paper: std::collections::HashMap<String, String> = key_pairs(&plan).into_iter().collect();
    let out_key = |k: &str| match keys {
        KeyStyle::Paper => paper.get(k).cloned().unwrap_or_else(|| k.to_string()),
        KeyStyle::Timm => vgg::weights::keys::timm_key(k),
        KeyStyle::Torchvision => k.to_string(),
    };
    let stored = |d: Dtype| match d {
        Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16 => dtype,
        other => other,
    };
    let mut keras_names = std::collections::HashMap::new();
    let bytes = match format.as_str() {
        "safetensors" => {
            vgg::export::write_safetensors(&a.output, &config, &sd, Some(&w.preprocess), keys, dtype)?;
            None
        }
        "pth" | "pt" => Some(vgg::weights::pth::write(&rename(&sd, &plan, keys), dtype)?),
        "onnx" => {
            if dtype != Dtype::F32 {
                bail!("ONNX files are written in f32 (--dtype {} is for safetensors and pth)", a.dtype);
            }
            let input = match &a.size {
                Some(s) => vgg::parse::size(s)?,
                None => w.preprocess.crop.unwrap_or([224, 224]),
            };
            let opts = OnnxOptions { input, fold_batchnorm: a.fold_bn };
            Some(to_onnx(&config, &sd, Some(&w.preprocess), &opts)?.0)
        }
        "h5" | "hdf5" => {
            if dtype != Dtype::F32 {
                bail!("Keras .h5 files are written in f32 (--dtype {} is for safetensors and pth)", a.dtype);
            }
            let (bytes, map) = vgg::weights::keras::write(&sd, &config, &w.preprocess)?;
            keras_names = map.into_iter().collect();
            Some(bytes)
        }
        other => bail!("unknown output format '{other}' (expected safetensors, pth, onnx or h5)"),
    };
    if let Some(b) = &bytes {
        vgg::weights::safetensors::write_atomic(&a.output, b)?;
    }
    let size = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
    let rows: Vec<serde_json::Value> = sd
        .iter()
        .map(|(k, t)| {
            let to = match format.as_str() {
                "onnx" => k.clone(),
                // BatchNorm's num_batches_tracked has no Keras counterpart.
                "h5" | "hdf5" => keras_names.get(k).cloned().unwrap_or_else(|| "-".into()),
                _ => out_key(k),
            };
            let out_dtype = if matches!(format.as_str(), "onnx" | "h5" | "hdf5") { Dtype::F32 } else { stored(t.dtype) };
            serde_json::json!({"from": k, "to": to, "shape": t.shape, "from_dtype": t.dtype.name(), "to_dtype": out_dtype.name()})
        })
        .collect();
    if a.json {
        let o = serde_json::json!({
            "input": a.input, "output": a.output.display().to_string(), "format": format,
            "arch": config.arch_name(), "dtype": a.dtype.name(), "bytes": size, "tensors": rows,
        });
        println!("{o}");
        return Ok(());
    }
    println!("{} ({}) -> {} ({format}, {size} bytes)", config.arch_name(), w.source, a.output.display());
    for r in &rows {
        let shape: Vec<String> = r["shape"].as_array().into_iter().flatten().map(|v| v.to_string()).collect();
        println!(
            "  {:<28} -> {:<28} {:<18} {} -> {}",
            r["from"].as_str().unwrap_or(""),
            r["to"].as_str().unwrap_or(""),
            shape.join("x"),
            r["from_dtype"].as_str().unwrap_or(""),
            r["to_dtype"].as_str().unwrap_or("")
        );
    }
    if format == "pth" || format == "pt" {
        println!("note: a .pth state dict has no metadata; readers infer the architecture from its keys");
    }
    Ok(())
}

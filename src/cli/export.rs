//! `vgg export`

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use vgg::onnx::{OnnxOptions, to_onnx};

use super::ArchArgs;

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    arch: ArchArgs,
    /// A .pth or .safetensors file, torchvision:NAME, random, formula or fashion-mnist (the
    /// built-in model, the default without --arch).
    #[arg(long)]
    weights: Option<String>,
    /// onnx or safetensors (default: from --out's extension).
    #[arg(long)]
    format: Option<String>,
    /// The file to write.
    #[arg(long)]
    out: PathBuf,
    /// ONNX: the input size, N or HxW, that the ImageNet head's adaptive pool is exported for
    /// (default: the weights' crop, else 224). CIFAR-style heads take any size.
    #[arg(long)]
    size: Option<String>,
    /// ONNX: fold BatchNorm into the convolutions instead of BatchNormalization nodes.
    #[arg(long)]
    fold_bn: bool,
    /// safetensors: torchvision (features.0.weight), paper (conv1_1.weight) or timm
    /// (pre_logits.fc1.weight for the head) keys.
    #[arg(long, default_value = "torchvision")]
    keys: vgg::weights::KeyStyle,
    /// safetensors: f32, f16 or bf16 storage.
    #[arg(long, default_value = "f32")]
    dtype: vgg::weights::Dtype,
    /// Print a JSON object describing what was written.
    #[arg(long)]
    json: bool,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let format = match (&a.format, a.out.extension().and_then(|e| e.to_str())) {
        (Some(f), _) => f.to_lowercase(),
        (None, Some(e)) => e.to_lowercase(),
        (None, None) => bail!("give --format onnx or safetensors, or an --out with that extension"),
    };
    let loaded = super::load_model(&a.arch, a.weights.as_deref(), true)?;
    let config = loaded.model.config().clone();
    let sd = loaded.model.state_dict();
    let source = loaded.source.clone();
    let bytes_written;
    let mut info =
        serde_json::json!({"out": a.out.display().to_string(), "arch": config.arch_name(), "source": source});
    match format.as_str() {
        "onnx" => {
            let input = match &a.size {
                Some(s) => vgg::parse::size(s)?,
                None => loaded.preprocess.crop.unwrap_or([224, 224]),
            };
            let opts = OnnxOptions { input, fold_batchnorm: a.fold_bn };
            let (bytes, summary) = to_onnx(&config, &sd, Some(&loaded.preprocess), &opts)?;
            vgg::weights::safetensors::write_atomic(&a.out, &bytes)?;
            bytes_written = bytes.len();
            let dims: Vec<String> = summary.input.iter().map(|d| d.map_or("?".into(), |v| v.to_string())).collect();
            info["format"] = "onnx".into();
            info["opset"] = vgg::onnx::OPSET.into();
            info["input"] = serde_json::json!(summary.input);
            info["output"] = summary.output.clone().into();
            info["nodes"] = summary.nodes.into();
            if !a.json {
                println!(
                    "{} ({source}) -> {}: ONNX opset {}, {} nodes, input [{}], output {}{}",
                    config.arch_name(),
                    a.out.display(),
                    vgg::onnx::OPSET,
                    summary.nodes,
                    dims.join(", "),
                    summary.output,
                    if a.fold_bn { ", BatchNorm folded" } else { "" }
                );
            }
        }
        "safetensors" => {
            let (keys, dtype) = (a.keys, a.dtype);
            vgg::weights::keys::check_style(&config, keys).map_err(anyhow::Error::msg)?;
            let n = vgg::export::write_safetensors(&a.out, &config, &sd, Some(&loaded.preprocess), keys, dtype)?;
            bytes_written = std::fs::metadata(&a.out).map(|m| m.len() as usize).unwrap_or(0);
            info["format"] = "safetensors".into();
            info["tensors"] = n.into();
            info["dtype"] = a.dtype.name().into();
            if !a.json {
                println!(
                    "{} ({source}) -> {}: {n} tensors, {} keys, {}",
                    config.arch_name(),
                    a.out.display(),
                    a.keys,
                    a.dtype
                );
            }
        }
        other => bail!("unknown format '{other}' (expected onnx or safetensors)"),
    }
    info["bytes"] = bytes_written.into();
    if a.json {
        println!("{info}");
    }
    Ok(())
}

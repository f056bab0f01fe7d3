//! `vgg summary`

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;
use vgg::config::{LayerKind, VggConfig};

use super::ArchArgs;

#[derive(Args, Debug)]
pub struct SummaryArgs {
    #[command(flatten)]
    arch: ArchArgs,
    /// Input size, N or HxW.
    #[arg(long, default_value = "224")]
    input: String,
    /// One JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

fn shape_str(s: &[usize]) -> String {
    s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub fn run(a: SummaryArgs) -> Result<()> {
    let Some(config) = a.arch.config()? else { bail!("--arch is required") };
    let input = vgg::parse::size(&a.input)?;
    if input[0] < VggConfig::MIN_INPUT || input[1] < VggConfig::MIN_INPUT {
        bail!("input {}x{} is too small: five 2x2 max-pools need at least 32x32", input[0], input[1]);
    }
    let plan = config.plan(input);
    // BatchNorm running statistics are stored with the weights but are not parameters.
    let buffers: u64 = plan
        .layers
        .iter()
        .map(|l| if let LayerKind::BatchNorm { channels } = l.kind { 2 * channels as u64 } else { 0 })
        .sum();
    let weight_bytes = (plan.params() + buffers) * 4;
    if a.json {
        let layers: Vec<_> = plan
            .layers
            .iter()
            .map(|l| {
                json!({"name": l.name, "key": l.key, "type": l.kind.type_name(), "out_shape": l.out_shape, "params": l.params, "macs": l.macs})
            })
            .collect();
        let out = json!({
            "arch": config.arch_name(),
            "config": config,
            "input": input,
            "layers": layers,
            "params": plan.params(),
            "feature_params": plan.feature_params(),
            "classifier_params": plan.classifier_params(),
            "macs": plan.macs(),
            "weight_bytes_f32": weight_bytes,
        });
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!("{config}, input {}x{}", input[0], input[1]);
    println!("{:<9} {:<14} {:<18} {:>14} {:>14} {:>16}", "layer", "key", "type", "output", "params", "MACs");
    for l in &plan.layers {
        println!(
            "{:<9} {:<14} {:<18} {:>14} {:>14} {:>16}",
            l.name,
            l.key,
            l.kind.type_name(),
            shape_str(&l.out_shape),
            if l.params > 0 { group(l.params) } else { "-".into() },
            if l.macs > 0 { group(l.macs) } else { "-".into() }
        );
    }
    println!();
    println!(
        "parameters     {:>15}  (features {}, classifier {})",
        group(plan.params()),
        group(plan.feature_params()),
        group(plan.classifier_params())
    );
    println!("MACs per image {:>15}  ({:.3} G)", group(plan.macs()), plan.macs() as f64 / 1e9);
    println!(
        "weights (f32)  {:>15}  bytes ({:.1} MiB, BatchNorm buffers included)",
        group(weight_bytes),
        weight_bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}

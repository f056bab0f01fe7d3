//! `vgg weights`

use anyhow::Result;
use clap::Subcommand;
use vgg::weights::registry::{Fetcher, REGISTRY};

use super::download_bar;

#[derive(Subcommand, Debug)]
pub enum WeightsCommand {
    /// The published weights, their accuracy and whether they are cached.
    List,
    /// Where the cache is and where a name would be stored.
    Path {
        /// torchvision:NAME (optional).
        name: Option<String>,
    },
    /// Download and verify weights into the cache.
    Fetch {
        /// torchvision:NAME.
        name: String,
    },
}

pub fn run(cmd: WeightsCommand) -> Result<()> {
    let fetcher = Fetcher::from_env();
    match cmd {
        WeightsCommand::List => {
            println!("{:<28} {:<9} {:>7} {:>7}  {:<7} url", "name", "arch", "acc@1", "acc@5", "cached");
            for p in REGISTRY {
                let acc = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
                let cached = if fetcher.path_of(&p).exists() { "yes" } else { "no" };
                println!(
                    "{:<28} {:<9} {:>7} {:>7}  {:<7} {}",
                    format!("torchvision:{}", p.name),
                    p.arch,
                    acc(p.acc1),
                    acc(p.acc5),
                    cached,
                    p.url
                );
            }
            println!("\ncache: {} (set VGG_CACHE_DIR to move it)", fetcher.cache_dir.display());
        }
        WeightsCommand::Path { name } => match name {
            Some(n) => println!("{}", fetcher.path_of(vgg::weights::registry::lookup(&n)?).display()),
            None => println!("{}", fetcher.cache_dir.display()),
        },
        WeightsCommand::Fetch { name } => {
            let bar = download_bar();
            let path = fetcher.get(&name, &mut |done, total| {
                if let Some(t) = total {
                    bar.set_length(t);
                }
                bar.set_position(done);
            })?;
            bar.finish_and_clear();
            println!("{}", path.display());
        }
    }
    Ok(())
}

//! The `vgg` command line: thin verbs over the library. Owns the terminal, exit codes and `--json`.

mod cli;

use clap::Parser;

fn main() {
    // Die quietly on a closed pipe (`vgg summary | head`) instead of panicking in println!.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

//! The `vgg` command line: thin verbs over the library. Owns the terminal, exit codes and `--json`.

mod cli;

use clap::Parser;

fn main() {
    // Die quietly on a closed pipe (`vgg summary | head`) instead of panicking in println!.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // The engine allocates activation buffers of up to tens of MiB per layer. glibc serves those
    // with fresh mmaps (and gives freed heap tops back to the OS), so every forward pass paid
    // its page faults again: 10-15% of VGG-16's batch-1 latency. Keep them on the heap instead.
    #[cfg(target_env = "gnu")]
    if std::env::var_os("VGG_SYSTEM_MALLOC").is_none() {
        // SAFETY: mallopt only changes allocator parameters; called before any threads start.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    }
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

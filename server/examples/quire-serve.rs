//! `quire serve` as a standalone program (same flags), for working on the server without the `quire` CLI:
//! `cargo run --release -p quire-server --example quire-serve -- -m model.gguf`.

use clap::Parser;

#[derive(Parser)]
#[command(name = "quire-serve", about = "Quire's HTTP server (the `quire serve` subcommand on its own)")]
struct Cli {
    #[command(flatten)]
    serve: quire_server::cli::ServeArgs,
}

fn main() {
    if let Err(e) = quire_server::cli::run(&Cli::parse().serve) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

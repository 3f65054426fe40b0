//! mslt-cli: multi-stage layerwise training of BERT. One file per subcommand under `commands/`.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod commands;

#[derive(Parser)]
#[command(
    name = "mslt-cli",
    version,
    about = "Multi-stage layerwise BERT training (Progressively Stacking 2.0) in Rust/Candle"
)]
struct Cli {
    /// CPU threads for matmuls and elementwise ops (default: all physical cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Forward pass (eval mode) of a BERT over token ids or text; writes safetensors.
    Encode(commands::encode::EncodeArgs),
    /// Show a model directory, safetensors file or config.json: config, parameters, tensors.
    Inspect(commands::inspect::InspectArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MSLT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        // One line: the whole context chain.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        // Read by candle's gemm and its rayon pool at first use.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    match cli.command {
        Command::Encode(a) => commands::encode::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
    }
}

//! mslt-cli: multi-stage layerwise training of BERT. One file per subcommand under `commands/`.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod commands;

// Candle allocates a fresh buffer for every op; glibc malloc hands large ones back to the OS at
// once, so each step pays page faults on hundreds of MB (measured on 2 cores: 10 s of system time
// in a 14 s run of 4 `mini` steps). mimalloc, told never to purge freed memory, reuses it.
#[global_allocator]
static GLOBAL: heap::Counting = heap::Counting;

/// mimalloc with byte accounting (current and peak), read by `mslt-cli bench` for its memory column.
mod heap {
    use std::alloc::{GlobalAlloc, Layout};
    use std::sync::atomic::{AtomicU64, Ordering};

    static CURRENT: AtomicU64 = AtomicU64::new(0);
    static PEAK: AtomicU64 = AtomicU64::new(0);

    pub struct Counting;

    fn add(n: usize) {
        let now = CURRENT.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }

    // SAFETY: every call forwards to mimalloc with the same arguments; the counters do not
    // touch the memory.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            let p = unsafe { mimalloc::MiMalloc.alloc(l) };
            if !p.is_null() {
                add(l.size());
            }
            p
        }
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            let p = unsafe { mimalloc::MiMalloc.alloc_zeroed(l) };
            if !p.is_null() {
                add(l.size());
            }
            p
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            unsafe { mimalloc::MiMalloc.dealloc(p, l) };
            CURRENT.fetch_sub(l.size() as u64, Ordering::Relaxed);
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
            let q = unsafe { mimalloc::MiMalloc.realloc(p, l, new) };
            if !q.is_null() {
                CURRENT.fetch_sub(l.size() as u64, Ordering::Relaxed);
                add(new);
            }
            q
        }
    }

    pub struct Probe;

    impl mslt_core::bench::HeapProbe for Probe {
        fn current(&self) -> u64 {
            CURRENT.load(Ordering::Relaxed)
        }
        fn peak(&self) -> u64 {
            PEAK.load(Ordering::Relaxed)
        }
        fn reset_peak(&self) {
            PEAK.store(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// `mi_option_purge_delay` in mimalloc v2's `mi_option_e` (libmimalloc-sys is pinned to =0.1.49).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn keep_freed_memory() {
    // SAFETY: sets a process-wide allocator option; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

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
    /// Tokenise and pack a text corpus into training shards.
    Prepare(commands::prepare::PrepareArgs),
    /// MLM (+NSP) pre-training with checkpoints and exact resume.
    Train(Box<commands::train::TrainArgs>),
    /// Run a plan of named runs (full / stack / mslt ...) and summarise them with plots.
    Ablate(commands::ablate::AblateArgs),
    /// Time the training step of every stage of a schedule against the full model.
    Bench(Box<commands::bench::BenchArgs>),
    /// Fine-tune for sequence classification on a GLUE-TSV or CSV task (dev metrics per epoch).
    Finetune(commands::finetune::FinetuneArgs),
    /// Write a checkpoint as a Hugging Face model directory (loads in transformers unchanged).
    Export(commands::export::ExportArgs),
    /// Fused CUDA kernels: NVRTC compile check, correctness check, timings.
    Kernels(commands::kernels::KernelsArgs),
    /// MLM loss and accuracy of a checkpoint on prepared data.
    Eval(commands::eval::EvalArgs),
    /// Show a model directory, safetensors file or config.json: config, parameters, tensors.
    Inspect(commands::inspect::InspectArgs),
}

fn main() {
    keep_freed_memory();
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
        Command::Prepare(a) => commands::prepare::run(a),
        Command::Train(a) => commands::train::run(*a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Kernels(a) => commands::kernels::run(a),
        Command::Finetune(a) => commands::finetune::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Bench(a) => commands::bench::run_cmd(*a),
        Command::Ablate(a) => commands::ablate::run(a),
    }
}

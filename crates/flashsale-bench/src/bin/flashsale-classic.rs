//! `flashsale-classic`: the classic seckill design as an HTTP server, the
//! fair peer `flashsale bench` compares Flashsale with over HTTP
//! (`flashsale_bench::classic`; docs/BENCHMARKS.md, "The fair peer").

use std::process::ExitCode;

use clap::Parser as _;
use flashsale_bench::classic::{self, ClassicArgs};

// The allocator Flashsale's server runs on: the peer is built from the same
// parts.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = ClassicArgs::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(workers) = args.workers {
        runtime.worker_threads(workers.max(1));
    }
    let result = runtime
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(classic::main(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flashsale-classic: {e:#}");
            ExitCode::FAILURE
        }
    }
}

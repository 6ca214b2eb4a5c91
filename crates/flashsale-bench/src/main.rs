//! `flashsale-bench`: parse the flags, run the load, exit non-zero when an
//! invariant broke. `flashsale bench …` runs this binary.

use std::process::ExitCode;

use clap::Parser as _;
use flashsale_bench::BenchArgs;

// The load tool shares the machine with the server it measures: the same
// allocator as the server keeps its own per-request cost low.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = BenchArgs::parse();
    match flashsale_bench::run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("flashsale bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

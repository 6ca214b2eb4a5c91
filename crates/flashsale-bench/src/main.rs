//! `flashsale-bench`: parse the flags, run the load, print the report (or
//! the JSON summary with `--json`), exit non-zero when an invariant broke.
//! `flashsale bench …` runs this binary.

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
    let summary = match flashsale_bench::run(&args).await {
        Ok(summary) => summary,
        Err(e) => {
            eprintln!("flashsale bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        match serde_json::to_string(&summary) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("flashsale bench: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", summary.render());
    }
    if summary.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

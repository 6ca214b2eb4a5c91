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
    if args.mode == flashsale_bench::args::Mode::Room {
        return match flashsale_bench::room::run(&args).await {
            Ok(summary) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&summary).unwrap_or_default()
                );
                if summary.never_told == 0 && summary.stream_failures == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("flashsale bench: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if args.mode == flashsale_bench::args::Mode::WriterDrain {
        return match flashsale_bench::drain::run(&args).await {
            Ok(summary) => {
                if args.json {
                    println!("{}", serde_json::to_string(&summary).unwrap_or_default());
                } else {
                    print!("{}", summary.render());
                }
                if summary.ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("flashsale bench: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
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

//! `flashsale-bench-report`: the writing half of `scripts/bench-report.sh`.
//! `meta` prints the results file's first record (this machine, the date,
//! the command); `render` turns a results file into the generated section of
//! docs/BENCHMARKS.md and the PNG plots in docs/plots/
//! (`flashsale_bench::benchmarks`, `flashsale_bench::plots`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser as _;
use flashsale_bench::benchmarks::{Machine, Meta, Record, Results};

/// Writes the performance report from the results of `scripts/bench-report.sh`.
#[derive(clap::Parser, Debug)]
#[command(name = "flashsale-bench-report", version)]
enum Cli {
    /// Print the meta record of a new results file: this machine, the date
    /// (now, UTC) and how the report is being made.
    Meta {
        /// The command that makes the report.
        #[arg(long)]
        command: String,
        /// The commit being measured.
        #[arg(long)]
        commit: String,
        /// The durations and sizes, in a sentence.
        #[arg(long)]
        method: String,
        /// Short smoke-test floods.
        #[arg(long)]
        quick: bool,
    },
    /// Write the report from a results file.
    Render {
        /// The results file (JSON Lines: one meta record, then runs).
        #[arg(long)]
        results: PathBuf,
        /// The document whose generated section is replaced.
        #[arg(long, default_value = "docs/BENCHMARKS.md")]
        doc: PathBuf,
        /// Where the plots go.
        #[arg(long, default_value = "docs/plots")]
        plots: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flashsale-bench-report: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli {
        Cli::Meta {
            command,
            commit,
            method,
            quick,
        } => {
            let meta = Meta {
                date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
                command,
                commit,
                quick,
                method,
                machine: Machine::probe(),
            };
            println!("{}", serde_json::to_string(&Record::Meta(meta))?);
        }
        Cli::Render {
            results,
            doc,
            plots,
        } => {
            let results = Results::read(&results)?;
            let written = flashsale_bench::benchmarks::publish(&results, &doc, &plots)?;
            eprintln!(
                "wrote the report section of {} and {}",
                doc.display(),
                written.join(", ")
            );
        }
    }
    Ok(())
}

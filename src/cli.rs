//! The command line: `serve`, `token`, `bench`, `backup`, `restore`.
//!
//! `bench` is an external subcommand, as with cargo and git: the load tool
//! is its own binary, `flashsale-bench`, so the server does not link an HTTP
//! client, a progress bar and histograms. `flashsale bench ARGS` runs the
//! `flashsale-bench` that sits next to the running executable with `ARGS`
//! untouched, and refuses with the command that builds it when it is absent.
//!
//! `backup` and `restore` (the embedded store's, in
//! [`crate::backend::embedded::backup`]) print one summary line, or one JSON
//! document with `--json`, success or error. Exit status: 0 done, 2 refused
//! (a bad file, a busy or non-empty directory: the caller's to fix), 1 a
//! step failed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::backend::embedded::backup::{self, BackupError, Summary};
use crate::config::ServeArgs;

/// File name of the load tool's binary.
pub const BENCH_BINARY: &str = "flashsale-bench";

/// Flashsale: sells N units to a crowd, never oversells, never loses an order.
#[derive(Parser, Debug)]
#[command(name = "flashsale", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the service (embedded default: no external service needed).
    Serve(Box<ServeArgs>),
    /// Mint a buyer JWT for testing.
    Token(TokenArgs),
    /// Flood a running server with purchases and verify the invariants
    /// (runs `flashsale-bench`; `flashsale bench --help` lists its flags).
    #[command(disable_help_flag = true)]
    Bench {
        /// Flags for `flashsale-bench`, passed on untouched.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Write a consistent copy of the embedded store to a file, while
    /// `serve` runs on it or not.
    Backup(BackupArgs),
    /// Put a backup in place as the embedded store of a data directory
    /// (no server may run on it).
    Restore(RestoreArgs),
}

/// Flags of `flashsale backup`.
#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    /// Directory of the embedded store to back up.
    #[arg(long, env = "FLASHSALE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The backup file to write (replaced, once the new copy is complete,
    /// if it exists).
    #[arg(long)]
    pub to: PathBuf,
    /// Print the summary, or the error, as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `flashsale restore`.
#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// The backup file (written by `flashsale backup`).
    #[arg(long)]
    pub from: PathBuf,
    /// Directory to restore into; created if missing, must be empty unless
    /// --force.
    #[arg(long, env = "FLASHSALE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Replace the store already in --data-dir (never while a server runs
    /// on it).
    #[arg(long)]
    pub force: bool,
    /// Print the summary, or the error, as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `flashsale token`.
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// The buyer's user id (`sub`).
    #[arg(long)]
    pub user: String,
    /// HS256 secret (the server's `FLASHSALE_JWT_SECRET`). Only HS256 tokens
    /// are minted: RS256/ES256 tokens come from whoever holds the private key.
    #[arg(long, env = "FLASHSALE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Validity in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: u64,
    /// Mint this many tokens, one per line, for users `<user>-0` … `<user>-(N-1)`
    /// (a token list for load tools such as `wrk`).
    #[arg(long)]
    pub count: Option<u64>,
}

/// Where `flashsale bench` looks for the load tool: next to `current_exe`.
pub fn bench_binary(current_exe: &Path) -> PathBuf {
    current_exe.with_file_name(format!("{BENCH_BINARY}{}", std::env::consts::EXE_SUFFIX))
}

/// Runs `flashsale-bench` with `args`: on Unix it replaces this process (so
/// signals, output and the exit status are the load tool's own); elsewhere
/// it waits for the child and passes its status on.
///
/// # Errors
/// When the load tool is not next to this executable (the message names
/// the build command) or cannot be started.
pub fn run_bench(args: Vec<OsString>) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let bench = bench_binary(&exe);
    if !bench.is_file() {
        anyhow::bail!(
            "`flashsale bench` runs the load tool {}, which is missing; build it with \
             `cargo build --release` at the repository root (builds both binaries) or \
             `cargo build --release -p flashsale-bench`",
            bench.display()
        );
    }
    let mut command = std::process::Command::new(&bench);
    command.args(args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        // Usage and errors then read `flashsale bench …`, as typed.
        let error = command.arg0("flashsale bench").exec();
        Err(error).with_context(|| format!("running {}", bench.display()))
    }
    #[cfg(not(unix))]
    {
        let status = command
            .status()
            .with_context(|| format!("running {}", bench.display()))?;
        Ok(match status.code().and_then(|c| u8::try_from(c).ok()) {
            Some(0) => ExitCode::SUCCESS,
            Some(code) => ExitCode::from(code),
            None => ExitCode::FAILURE,
        })
    }
}

/// Runs `flashsale backup` and prints its outcome.
pub fn run_backup(args: &BackupArgs) -> ExitCode {
    report(
        "backup",
        backup::backup(&args.data_dir, &args.to),
        args.json,
    )
}

/// Runs `flashsale restore` and prints its outcome.
pub fn run_restore(args: &RestoreArgs) -> ExitCode {
    report(
        "restore",
        backup::restore(&args.from, &args.data_dir, args.force),
        args.json,
    )
}

/// The one line a person reads after a backup or restore.
pub fn summary_line(command: &str, s: &Summary) -> String {
    let (verb, place) = match command {
        "backup" => ("written to", s.file.display()),
        _ => ("restored into", s.data_dir.display()),
    };
    let migrated = s
        .migrated_to
        .map(|v| format!(", migrated to schema {v}"))
        .unwrap_or_default();
    format!(
        "{command}: {} sales, {} orders, {} bytes, schema {}{migrated}, integrity ok, {verb} {place} \
         in {} ms",
        s.sales, s.orders, s.bytes, s.schema_version, s.duration_ms
    )
}

/// Prints `outcome` (stdout for a summary or a `--json` error, stderr for
/// a plain error) and picks the exit status.
fn report(command: &str, outcome: Result<Summary, BackupError>, json: bool) -> ExitCode {
    match (outcome, json) {
        (Ok(summary), false) => println!("{}", summary_line(command, &summary)),
        (Ok(summary), true) => {
            let mut value = serde_json::to_value(&summary).unwrap_or_default();
            value["command"] = command.into();
            println!("{value}");
        }
        (Err(error), json) => {
            if json {
                let body = serde_json::json!({
                    "error": {"code": error.code(), "message": error.to_string()}
                });
                println!("{body}");
            } else {
                eprintln!("flashsale {command}: {error} [{}]", error.code());
            }
            return ExitCode::from(if error.is_refusal() { 2 } else { 1 });
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_flags_pass_through_untouched() {
        let cli = Cli::try_parse_from([
            "flashsale",
            "bench",
            "--mode",
            "healthz",
            "--help",
            "-x",
            "--url=http://h:1",
        ])
        .unwrap();
        let Command::Bench { args } = cli.command else {
            panic!("not the bench command");
        };
        assert_eq!(
            args,
            ["--mode", "healthz", "--help", "-x", "--url=http://h:1"]
        );
        let cli = Cli::try_parse_from(["flashsale", "bench"]).unwrap();
        assert!(matches!(cli.command, Command::Bench { args } if args.is_empty()));
    }

    fn serve(extra: &[&str]) -> Result<crate::Settings, clap::Error> {
        let mut argv = vec!["flashsale", "serve"];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv)?;
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        Ok(args.into_settings())
    }

    #[test]
    fn writer_and_management_flags_reach_the_settings() {
        use crate::backend::amqp::ManagementApi;
        use crate::worker::order_writer::WriterSettings;
        let defaults = serve(&[]).unwrap();
        assert_eq!(defaults.writer, WriterSettings::default());
        assert_eq!(defaults.queue_management, ManagementApi::Derived);
        let s = serve(&[
            "--writer-consumers",
            "3",
            "--writer-prefetch",
            "500",
            "--writer-batch",
            "250",
            "--queue-management-url",
            "http://ops:secret@mq:15672",
        ])
        .unwrap();
        assert_eq!(
            (s.writer.consumers, s.writer.prefetch, s.writer.batch),
            (3, 500, 250)
        );
        assert_eq!(
            s.queue_management,
            ManagementApi::At("http://ops:secret@mq:15672".into())
        );
        assert!(!format!("{:?}", s.queue_management).contains("secret"));
        assert_eq!(
            serve(&["--queue-management-url", "off"])
                .unwrap()
                .queue_management,
            ManagementApi::Off
        );
        for bad in [
            &["--writer-consumers", "0"][..],
            &["--writer-consumers", "65"],
            &["--writer-prefetch", "0"],
            &["--writer-batch", "0"],
        ] {
            assert!(serve(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_load_tool_sits_next_to_the_executable() {
        let found = bench_binary(Path::new("/opt/fs/bin/flashsale"));
        assert_eq!(
            found,
            Path::new("/opt/fs/bin")
                .join(format!("flashsale-bench{}", std::env::consts::EXE_SUFFIX))
        );
    }
}

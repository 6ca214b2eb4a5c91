//! The command line: `serve`, `token`, `bench`.
//!
//! `bench` is an external subcommand, as with cargo and git: the load tool
//! is its own binary, `flashsale-bench`, so the server does not link an HTTP
//! client, a progress bar and histograms. `flashsale bench ARGS` runs the
//! `flashsale-bench` that sits next to the running executable with `ARGS`
//! untouched, and refuses with the command that builds it when it is absent.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

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

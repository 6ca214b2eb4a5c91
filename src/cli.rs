//! The command line: `serve`, `token`, `bench`.

use clap::{Parser, Subcommand};

use crate::config::ServeArgs;

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
    Serve(ServeArgs),
    /// Mint a buyer JWT for testing.
    Token(TokenArgs),
    /// Flood a running server with purchases and verify the invariants.
    Bench(crate::bench::BenchArgs),
}

/// Flags of `flashsale token`.
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// The buyer's user id (`sub`).
    #[arg(long)]
    pub user: String,
    /// HS256 secret (the server's `FLASHSALE_JWT_SECRET`).
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

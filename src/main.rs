//! Entry point: parse the command line, start telemetry, run.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use flashsale::auth::{mint_token, Secret};
use flashsale::cli::{Cli, Command};
use flashsale::{telemetry, Application};

// Profiling (callgrind) showed glibc malloc/free at a quarter of the
// instructions of a rejected purchase; mimalloc's thread-local free lists
// make the many small per-request allocations of hyper and axum cheap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process.
///
/// mimalloc commits its arenas eagerly, and where the kernel backs them
/// with 2 MiB huge pages (THP `always` or `madvise`) every touched arena
/// region counts whole: measured with 5,000 idle keep-alive connections,
/// 30.5 KiB of resident memory per connection with huge pages, 18.2 KiB
/// without — the difference between 1.5 GB and 0.9 GB for a waiting room
/// of 50,000. `FLASHSALE_HUGE_PAGES=1` keeps the kernel's choice.
fn without_huge_pages() {
    if std::env::var_os("FLASHSALE_HUGE_PAGES").is_some_and(|v| v == "1") {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no
    // memory of ours; a kernel without it answers EINVAL, which is ignored
    // (the process then runs with the kernel's default).
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> ExitCode {
    without_huge_pages();
    let result = match Cli::parse().command {
        // The load tool is a binary of its own: hand over before any runtime.
        Command::Bench { args } => flashsale::cli::run_bench(args),
        // Blocking file work on the calling thread: no runtime, no telemetry.
        Command::Backup(args) => Ok(flashsale::cli::run_backup(&args)),
        Command::Restore(args) => Ok(flashsale::cli::run_restore(&args)),
        command => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            // Idle blocking threads exit after a second: with mimalloc, memory a
            // blocking thread allocated (the start-up snapshot of a million
            // holdings, say) is only handed back to the OS once that thread
            // allocates again or exits.
            .thread_keep_alive(std::time::Duration::from_secs(1))
            .build()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(run(command))),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flashsale: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            telemetry::init_tracing();
            let settings = args.into_settings();
            let demo = settings.demo;
            let generated = (
                settings.admin_token.is_none(),
                settings.jwt_secret.is_none(),
            );
            let app = Application::build(settings).await?;
            // Never run open: print what was generated so the operator can use it.
            if generated.0 {
                println!("FLASHSALE_ADMIN_TOKEN={}", app.admin_token.expose());
            }
            // (Not generated when only public keys verify buyer tokens.)
            if let (true, Some(secret)) = (generated.1, &app.jwt_secret) {
                println!("FLASHSALE_JWT_SECRET={}", secret.expose());
            }
            tracing::info!(addr = %app.local_addr(), "flashsale listening");
            println!("flashsale listening on http://{}", app.local_addr());
            println!("admin dashboard: http://{}/admin", app.local_addr());
            if demo {
                let sale = app.demo_sale().await?;
                println!("demo sale page: http://{}/s/{sale}", app.local_addr());
            }
            let served = app
                .run_until_stopped(flashsale::app::shutdown_signal())
                .await;
            // The exporter's last batch, whether the stop was clean or not
            // (its blocking client must not run on the runtime's threads).
            let _ = tokio::task::spawn_blocking(telemetry::shutdown_tracing).await;
            served?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(args) => {
            use std::io::Write;
            let secret = Secret::new(args.jwt_secret);
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            match args.count {
                None => writeln!(out, "{}", mint_token(&secret, &args.user, args.ttl_secs)?)?,
                Some(n) => {
                    for i in 0..n {
                        let user = format!("{}-{i}", args.user);
                        writeln!(out, "{}", mint_token(&secret, &user, args.ttl_secs)?)?;
                    }
                }
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { args } => flashsale::cli::run_bench(args),
        Command::Backup(args) => Ok(flashsale::cli::run_backup(&args)),
        Command::Restore(args) => Ok(flashsale::cli::run_restore(&args)),
    }
}

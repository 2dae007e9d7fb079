use std::process::ExitCode;

use clap::Parser;
use mimalloc::MiMalloc;

use porteiro::app::{self, RunOptions, StartError};
use porteiro::cli::{Cli, Command};
use porteiro::snapshot::Snapshot;

// glibc malloc/free showed up at the top of the per-request profile; mimalloc is cheaper for
// the many short-lived allocations of request handling.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// rustls warns about every client that misbehaves (an IP address as SNI, say): client noise,
/// not operator news.
const DEFAULT_LOG_FILTER: &str = "info,rustls=error";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config, upgrade } => run(&config, upgrade),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match porteiro::config::load(path) {
        Ok(config) => {
            let c = Snapshot::build(&config, 0, None).counts();
            println!(
                "porteiro: {} is valid: {} tenants, {} hosts, {} pools, {} backends",
                path.display(),
                c.tenants,
                c.hosts,
                c.pools,
                c.backends
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!(
                "porteiro: {} has {} error(s); nothing was applied",
                path.display(),
                errors.0.len()
            );
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path, upgrade: bool) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
        )
        .init();
    app::ignore_hangup_until_handled();
    match app::prepare(path, &RunOptions { upgrade }) {
        Ok(prepared) => {
            let c = prepared.snapshot.load().counts();
            tracing::info!(
                config = %path.display(), tenants = c.tenants, hosts = c.hosts, pools = c.pools,
                backends = c.backends, "porteiro starting"
            );
            prepared.server.run_forever()
        }
        Err(StartError::Config(errors)) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!(
                "porteiro: not started: {} has {} error(s)",
                path.display(),
                errors.0.len()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("porteiro: not started: {e}");
            ExitCode::FAILURE
        }
    }
}

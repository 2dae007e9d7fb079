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

/// Exit 1 for any error. Tenant files with errors are listed as `run` would treat them:
/// refused alone while the other tenants serve. Warnings (an expired certificate) do not fail.
fn check(path: &std::path::Path) -> ExitCode {
    let loaded = porteiro::config::load_isolating(path, &mut Default::default(), None);
    let config = match loaded {
        Ok(config) => config,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!(
                "porteiro: {} has {} error(s); nothing was applied",
                path.display(),
                errors.0.len()
            );
            return ExitCode::FAILURE;
        }
    };
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    let c = Snapshot::build(&config, 0, None).counts();
    if config.faults.is_empty() {
        println!(
            "porteiro: {} is valid: {} tenants, {} hosts, {} pools, {} backends",
            path.display(),
            c.tenants,
            c.hosts,
            c.pools,
            c.backends
        );
        return ExitCode::SUCCESS;
    }
    let errors: Vec<_> = config.faults.iter().flat_map(|f| &f.errors).collect();
    for e in &errors {
        eprintln!("error: {e}");
    }
    eprintln!(
        "porteiro: {} has {} error(s) in {} tenant file(s): `run` would refuse those files \
         (a file keeps its last good version while porteiro runs) and serve the {} other tenants",
        path.display(),
        errors.len(),
        config.faults.len(),
        c.tenants
    );
    ExitCode::FAILURE
}

fn run(path: &std::path::Path, upgrade: bool) -> ExitCode {
    let main_text = std::fs::read_to_string(path).unwrap_or_default();
    porteiro::logging::init(
        porteiro::config::log_format_of(&main_text),
        DEFAULT_LOG_FILTER,
    );
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

use std::process::ExitCode;

use clap::Parser;

use porteiro::app::{self, RunOptions, StartError};
use porteiro::cli::{Cli, Command};
use porteiro::snapshot::Snapshot;

// glibc malloc/free showed up at the top of the per-request profile; mimalloc is cheaper for
// the many short-lived allocations of request handling.
#[global_allocator]
static GLOBAL: porteiro::alloc::Mimalloc = porteiro::alloc::Mimalloc;

/// rustls warns about every client that misbehaves (an IP address as SNI, say): client noise,
/// not operator news.
const DEFAULT_LOG_FILTER: &str = "info,rustls=error";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, main_only } => check(&config, main_only),
        Command::Run { config, upgrade } => run(&config, upgrade),
        Command::Upgrade { config, pid } => upgrade(&config, pid),
    }
}

/// Exit 1 for any error (with `main_only`, for main-file errors only). Tenant files with
/// errors are listed as `run` would treat them: refused alone while the other tenants serve.
/// Warnings (an expired certificate) do not fail.
fn check(path: &std::path::Path, main_only: bool) -> ExitCode {
    let loaded = porteiro::config::load_isolating(path, &mut Default::default(), None);
    let mut config = match loaded {
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
    // A name that does not resolve now may resolve later (a container not started yet).
    for (name, e) in porteiro::reload::resolve_names_quietly(&mut config, None) {
        eprintln!("warning: backend name `{name}` does not resolve now ({e}); porteiro keeps trying while it runs");
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
    if main_only {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The graceful upgrade as one command: nothing happens to the old process unless the new one
/// has validated its configuration and is waiting for the sockets.
fn upgrade(path: &std::path::Path, old: i32) -> ExitCode {
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};
    let config = match porteiro::config::load_isolating(path, &mut Default::default(), None) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!("porteiro: upgrade not started; process {old} keeps serving");
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: signal 0 only asks whether the process exists.
    if old <= 1 || unsafe { libc::kill(old, 0) } != 0 {
        eprintln!("porteiro: no process {old} to take over from");
        return ExitCode::FAILURE;
    }
    let socket = &config.server.upgrade_socket;
    let _ = std::fs::remove_file(socket);
    let exe = std::env::current_exe().unwrap_or_else(|_| "porteiro".into());
    let child = std::process::Command::new(exe)
        .args(["run", "--upgrade", "-c"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        // Its own process group: stopping this command must not stop the new server.
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("porteiro: cannot start the new process: {e}");
            return ExitCode::FAILURE;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!("porteiro: the new process exited ({status}); process {old} keeps serving");
            return ExitCode::FAILURE;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            eprintln!(
                "porteiro: the new process never waited on {}; process {old} keeps serving",
                socket.display()
            );
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: a plain signal to a process id checked above.
    if unsafe { libc::kill(old, libc::SIGQUIT) } != 0 {
        let _ = child.kill();
        eprintln!("porteiro: cannot signal process {old}; the new process was stopped");
        return ExitCode::FAILURE;
    }
    println!(
        "porteiro: process {} is taking over from {old}, which serves its open requests for grace_period",
        child.id()
    );
    ExitCode::SUCCESS
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

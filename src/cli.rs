//! The command line: `porteiro run`, `porteiro check` and `porteiro upgrade`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "porteiro", version, about = "Multi-tenant reverse proxy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve traffic with the given configuration.
    Run {
        /// The main configuration file.
        #[arg(short, long, default_value = "/etc/porteiro/porteiro.toml")]
        config: PathBuf,
        /// Take over the listening sockets of a running porteiro (graceful upgrade; see README).
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate the configuration and print a summary, or every error (exit status 1).
    Check {
        /// The main configuration file.
        #[arg(short, long, default_value = "/etc/porteiro/porteiro.toml")]
        config: PathBuf,
        /// Exit 1 only for errors that refuse the whole configuration (the main file's), as
        /// `run` and reloads do; tenant file errors are still listed. For service managers.
        #[arg(long)]
        main_only: bool,
    },
    /// Replace the running porteiro PID with this binary without closing its listening
    /// sockets: start `run --upgrade`, wait until it waits for the sockets, then signal PID.
    Upgrade {
        /// The main configuration file.
        #[arg(short, long, default_value = "/etc/porteiro/porteiro.toml")]
        config: PathBuf,
        /// The running process to take over from.
        #[arg(long)]
        pid: i32,
    },
}

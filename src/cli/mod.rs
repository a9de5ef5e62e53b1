//! The command-line layer: argument parsing, output, exit codes.

use clap::Parser;

/// cinderblock: declarative block storage.
#[derive(Debug, Parser)]
#[command(name = "cinderblock", version, about)]
pub struct Cli {}

/// Runs the CLI and returns the process exit code.
pub fn run() -> i32 {
    let _cli = Cli::parse();
    0
}

//! `imagegate check`: the engine on manifest files, for CI.

use std::process::ExitCode;

/// Arguments of `imagegate check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {}

/// Runs `imagegate check`.
pub fn main(_args: CheckArgs) -> ExitCode {
    ExitCode::from(2)
}

//! `imagegate run`: the operator and webhook against a cluster.

/// Arguments of `imagegate run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {}

/// Runs `imagegate run`.
pub async fn main(_args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("run is not built yet")
}

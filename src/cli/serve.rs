//! `imagegate serve`: the webhook without a cluster.

/// Arguments of `imagegate serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

/// Runs `imagegate serve`.
pub async fn main(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("serve is not built yet")
}

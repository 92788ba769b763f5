//! Writes the generated policies of the scale benchmarks (`benches/support/generated.rs`) as
//! YAML files, one policy per file, as a GitOps repository of generated policies holds them.
//! `benches/reload.sh` serves them with `imagegate serve`.
//!
//! ```sh
//! cargo run --release --example generate_policies -- DIR POLICIES PATTERNS
//! cargo run --release --example generate_policies -- /tmp/policies 10000 100
//! ```

use std::path::PathBuf;

#[path = "../benches/support/generated.rs"]
mod generated;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, n, per] = args.as_slice() else {
        anyhow::bail!("usage: generate_policies DIR POLICIES PATTERNS");
    };
    let dir = PathBuf::from(dir);
    let (n, per): (usize, usize) = (n.parse()?, per.parse()?);
    std::fs::create_dir_all(&dir)?;
    for i in 0..n {
        let policy = generated::policy(i, per);
        let yaml = serde_saphyr::to_string(&policy)?;
        std::fs::write(dir.join(format!("team-{i:05}.yaml")), yaml)?;
    }
    Ok(())
}

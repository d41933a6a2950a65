//! Writes the CRDs of crates/api to crds/ and charts/ringfs/crds/ (relative to the
//! current directory, the workspace root); `--check` only fails when they are stale.

fn main() -> anyhow::Result<()> {
    let check = std::env::args().skip(1).any(|a| a == "--check");
    ringfs_operator::crdgen::run(std::path::Path::new("."), check)
}

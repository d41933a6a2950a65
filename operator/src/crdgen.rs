//! The `crdgen` binary's logic: write or check crds/*.yaml.

use anyhow::{bail, Context};
use std::path::Path;

pub fn run(root: &Path, check: bool) -> anyhow::Result<()> {
    let mut stale = Vec::new();
    for (dir, (file, yaml)) in ringfs_api::CRD_DIRS.iter().flat_map(|d| {
        ringfs_api::crd_files()
            .into_iter()
            .map(move |f| (root.join(d), f))
    }) {
        let dir = dir.as_path();
        let path = dir.join(file);
        if check {
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            if have != yaml {
                stale.push(path.display().to_string());
            }
        } else {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            std::fs::write(&path, yaml)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    if !stale.is_empty() {
        bail!(
            "stale CRDs: {}; run `cargo run --bin crdgen` and commit the result",
            stale.join(", ")
        );
    }
    Ok(())
}

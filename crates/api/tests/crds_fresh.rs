//! crds/*.yaml and the chart's copy are generated from this crate and committed; this
//! fails when either is stale.

#[test]
fn committed_crds_match_the_code() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for dir in ringfs_api::CRD_DIRS {
        for (file, want) in ringfs_api::crd_files() {
            let path = root.join(dir).join(file);
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                have == want,
                "{} is stale or missing; regenerate with `cargo run --bin crdgen` and commit it",
                path.display()
            );
        }
    }
}

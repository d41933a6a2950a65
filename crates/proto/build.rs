//! Compiles the .proto files with protox (pure Rust), so no `protoc` is needed to build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/raft.proto",
        "proto/block.proto",
        "proto/meta.proto",
        "proto/admin.proto",
        "proto/csi.proto",
        "proto/pluginregistration.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}

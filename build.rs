fn main() -> Result<(), Box<dyn std::error::Error>> {
    // No protoc is installed on build machines: use the vendored one.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    // The descriptors of every service, for gRPC server reflection.
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("descriptors.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .compile_protos(
            &[
                "proto/mcpfleet/v1/registry.proto",
                "proto/mcpfleet/internal/v1/raft.proto",
                "proto/mcpfleet/dataplane/v1/calls.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

//! Compiles the remote-write protobuf definitions in `proto/` into Rust types
//! with prost. protox parses the `.proto` files in pure Rust, so building needs
//! no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/types.proto",
        "proto/remote.proto",
        "proto/write_v2.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}

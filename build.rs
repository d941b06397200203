//! Compiles the gRPC contract in `proto/` and emits the file descriptor set that
//! server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Safety of set_var: build scripts are single-threaded.
    std::env::set_var("PROTOC", protoc);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("tollgate_descriptor.bin"))
        // Decode failures are the caller's fault: answer INVALID_ARGUMENT, not
        // the stock codec's INTERNAL.
        .codec_path("crate::api::codec::ProtoCodec")
        .compile_protos(&["proto/tollgate/v1/tollgate.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

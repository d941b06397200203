//! Compiles the gRPC contract in `proto/`, emits the file descriptor set that
//! server reflection serves, and generates the proto's JSON mapping (serde)
//! that the HTTP front door speaks.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Safety of set_var: build scripts are single-threaded.
    std::env::set_var("PROTOC", protoc);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("tollgate_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        // Decode failures are the caller's fault: answer INVALID_ARGUMENT, not
        // the stock codec's INTERNAL.
        .codec_path("crate::api::codec::ProtoCodec")
        .compile_protos(&["proto/tollgate/v1/tollgate.proto"], &["proto"])?;
    // `Value` is mapped by hand (src/api/json.rs): it also reads Cedar's own
    // JSON form of values.
    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .exclude([".tollgate.v1.Value"])
        .build(&[".tollgate.v1"])?;
    // The benchmarks' floor (src/api/floor.rs, feature `bench-floor`): its
    // own descriptor, so that reflection never lists it.
    tonic_prost_build::configure()
        .build_client(false)
        .bytes(".")
        .codec_path("crate::api::codec::ProtoCodec")
        .compile_protos(&["proto/tollgate/bench/v1/floor.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

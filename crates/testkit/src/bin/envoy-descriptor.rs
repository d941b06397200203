//! Writes the file descriptor set that tollgate's reflection serves for
//! Envoy's external authorization service: from the descriptor set of every
//! Envoy type that the `envoy-types` crate ships (`src/generated/types.bin`),
//! the files `envoy/service/auth/v3/external_auth.proto` needs, transitively.
//!
//! `cargo run -p tollgate-testkit --bin envoy-descriptor -- TYPES_BIN OUT`
//! (`scripts/envoy-descriptor` finds the crate's file and writes
//! `proto/envoy/ext_authz_descriptor.bin`).

use std::collections::{BTreeSet, HashMap};
use std::process::ExitCode;

use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};

const ROOT: &str = "envoy/service/auth/v3/external_auth.proto";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: envoy-descriptor TYPES_BIN OUT");
        return ExitCode::from(2);
    };
    let bytes = match std::fs::read(input) {
        Ok(bytes) => bytes,
        Err(error) => {
            eprintln!("envoy-descriptor: cannot read {input}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let set = match FileDescriptorSet::decode(bytes.as_slice()) {
        Ok(set) => set,
        Err(error) => {
            eprintln!("envoy-descriptor: {input} is not a file descriptor set: {error}");
            return ExitCode::FAILURE;
        }
    };
    let files: HashMap<&str, &FileDescriptorProto> =
        set.file.iter().map(|file| (file.name(), file)).collect();
    let mut needed = BTreeSet::new();
    let mut pending = vec![ROOT.to_string()];
    while let Some(name) = pending.pop() {
        if !needed.insert(name.clone()) {
            continue;
        }
        let Some(file) = files.get(name.as_str()) else {
            eprintln!("envoy-descriptor: {input} lacks {name}");
            return ExitCode::FAILURE;
        };
        pending.extend(file.dependency.iter().cloned());
    }
    // Dependencies first, in the set's own order.
    let subset = FileDescriptorSet {
        file: set
            .file
            .iter()
            .filter(|file| needed.contains(file.name()))
            .cloned()
            // Comments and source positions are not needed to call the
            // service.
            .map(|mut file| {
                file.source_code_info = None;
                file
            })
            .collect(),
    };
    if let Err(error) = std::fs::write(output, subset.encode_to_vec()) {
        eprintln!("envoy-descriptor: cannot write {output}: {error}");
        return ExitCode::FAILURE;
    }
    println!(
        "{} files of {} written to {output}",
        subset.file.len(),
        set.file.len()
    );
    ExitCode::SUCCESS
}

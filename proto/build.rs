//! Compiles the wire contract with `protox` (a pure-Rust protobuf compiler), so building needs no
//! `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "skoala/fleet/v1/common.proto",
        "skoala/fleet/v1/agent.proto",
        "skoala/fleet/v1/admin.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}

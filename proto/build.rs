//! Compiles `proto/charter.proto` with protox (pure Rust), so no protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/charter.proto"];
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}

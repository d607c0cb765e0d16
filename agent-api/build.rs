//! Generates the agent API's Rust types, client and server from `proto/agent.proto`.
//! Needs `protoc` on PATH (Debian: `protobuf-compiler`, see scripts/install-deps.sh).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        // The generated `connect(dst)` opens TCP; we only ever connect over the
        // VMM's vsock unix socket (see `client::connect`), so leave it out.
        .build_transport(false)
        .compile_protos(&["proto/agent.proto"], &["proto"])?;
    Ok(())
}

//! Compiles every `.proto` of the crate with protox (pure Rust, so no `protoc` is needed) and exports the
//! encoded descriptor set for gRPC server reflection, and each service's method names (metrics label them).

use prost::Message;

/// Every proto file the crate exposes, relative to the crate root; imports between them resolve against the crate
/// root.
const PROTOS: &[&str] = &[
    "comet/v1/nameserver.proto",
    "comet/v1/broker.proto",
    "apache/rocketmq/v2/definition.proto",
    "apache/rocketmq/v2/service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for file in PROTOS {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptor.bin"), fds.encode_to_vec())?;
    let mut methods = String::new();
    for file in &fds.file {
        for service in &file.service {
            let names: Vec<String> = service.method.iter().map(|m| format!("{:?}", m.name())).collect();
            methods.push_str(&format!(
                "/// Method names of `{}.{}`, in declaration order.\npub const {}_METHODS: &[&str] = &[{}];\n",
                file.package(),
                service.name(),
                service.name().to_uppercase(),
                names.join(", ")
            ));
        }
    }
    std::fs::write(out.join("methods.rs"), methods)?;
    // `bytes` fields of Comet's own API are `bytes::Bytes`, so message bodies are shared, not copied, between the
    // store's mapped records and the gRPC encoder.
    tonic_prost_build::configure()
        .bytes(".comet.v1")
        .bytes(".apache.rocketmq.v2.Message.body")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}

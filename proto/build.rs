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
        .bytes(".apache.rocketmq.v2.ReceiveMessageResponse")
        .bytes(".apache.rocketmq.v2.PullMessageResponse")
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::Codec")
        .compile_fds(pre_encoded_messages(fds))?;
    Ok(())
}

/// The stream items that deliver messages (`ReceiveMessageResponse`, `PullMessageResponse`) as generated code
/// sees them: their `message` field is `bytes` holding an encoded `Message` (the same bytes on the wire: both are
/// length-delimited field 2), so the broker writes a delivered message straight from the stored record instead of
/// building and encoding a `Message` of owned strings per message. Readers decode it with `Message::decode`. The
/// descriptor set served by reflection (`descriptor.bin`) keeps the real type.
fn pre_encoded_messages(mut fds: prost_types::FileDescriptorSet) -> prost_types::FileDescriptorSet {
    use prost_types::field_descriptor_proto::Type;
    for file in fds.file.iter_mut().filter(|f| f.package() == "apache.rocketmq.v2") {
        for message in file.message_type.iter_mut() {
            if !matches!(message.name(), "ReceiveMessageResponse" | "PullMessageResponse") {
                continue;
            }
            for field in message.field.iter_mut().filter(|f| f.name() == "message") {
                field.set_type(Type::Bytes);
                field.type_name = None;
            }
        }
    }
    fds
}

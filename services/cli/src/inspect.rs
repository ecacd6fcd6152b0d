//! `comet route`, `comet cluster`, `comet topics`: read-only views of the NameServer's tables.

use comet_nameserver_client::{ClientConfig, NameServerClient};

fn client(addresses: &[String]) -> anyhow::Result<NameServerClient> {
    Ok(NameServerClient::new(ClientConfig::new(addresses.to_vec()))?)
}

/// Prints a topic's queues per broker and the brokers' addresses.
pub async fn route(addresses: &[String], topic: &str) -> anyhow::Result<()> {
    let route = client(addresses)?.query_route(topic).await?;
    println!("topic {}", route.topic);
    println!("{:<24} {:>6} {:>6} {:>5} {:<12}", "BROKER", "READ", "WRITE", "PERM", "TYPE");
    for q in &route.queues {
        let kind = comet_proto::comet::v1::MessageType::try_from(q.message_type)
            .map(|t| t.as_str_name().trim_start_matches("MESSAGE_TYPE_").to_lowercase())
            .unwrap_or_else(|_| q.message_type.to_string());
        println!("{:<24} {:>6} {:>6} {:>5} {:<12}", q.broker_name, q.read_queue_nums, q.write_queue_nums, q.perm, kind);
    }
    for b in &route.brokers {
        let mut ids: Vec<_> = b.addresses.iter().collect();
        ids.sort();
        let members: Vec<String> = ids.iter().map(|(id, addr)| format!("{id}={addr}")).collect();
        println!("broker {} (cluster {}): {}", b.broker_name, b.cluster_name, members.join(" "));
    }
    Ok(())
}

/// Prints every cluster with its brokers.
pub async fn cluster(addresses: &[String]) -> anyhow::Result<()> {
    let info = client(addresses)?.cluster_info().await?;
    println!(
        "registry: {}{}",
        info.registry,
        if info.degraded { " (DEGRADED: serving last known routes)" } else { "" }
    );
    for c in &info.clusters {
        println!("cluster {}", c.cluster_name);
        for b in &c.brokers {
            let mut ids: Vec<_> = b.addresses.iter().collect();
            ids.sort();
            let members: Vec<String> = ids.iter().map(|(id, addr)| format!("{id}={addr}")).collect();
            println!("  {:<24} {}", b.broker_name, members.join(" "));
        }
    }
    Ok(())
}

/// Prints routed topic names, one per line.
pub async fn topics(addresses: &[String], cluster: Option<&str>) -> anyhow::Result<()> {
    for t in client(addresses)?.list_topics(cluster).await? {
        println!("{t}");
    }
    Ok(())
}

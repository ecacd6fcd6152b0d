//! etcd-mode NameServers against a real etcd: shared state, lease expiry, restart, outage and recovery.

use std::time::Duration;

use comet_nameserver_client::{ClientError, NameServerClient};
use comet_tests::harness::broker::{header, identity, topic, version};
use comet_tests::harness::etcd::Etcd;
use comet_tests::harness::nameserver::{NameServer, fast_client_config};
use comet_tests::harness::wait_until;
use tonic_health::pb::health_check_response::ServingStatus;

const PREFIX: &str = "/comet/test";

async fn routed(client: &NameServerClient, topic: &str) -> bool {
    client.query_route(topic).await.is_ok()
}

async fn gone(client: &NameServerClient, topic: &str) -> bool {
    matches!(client.query_route(topic).await, Err(ClientError::NotFound { .. }))
}

#[tokio::test]
async fn registration_through_one_nameserver_is_served_by_another() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let etcd = Etcd::start(dir.path()).await?;
    let a = NameServer::etcd(dir.path(), &etcd.endpoint(), PREFIX, 30_000).await?;
    let b = NameServer::etcd(dir.path(), &etcd.endpoint(), PREFIX, 30_000).await?;
    let (via_a, via_b) = (a.client()?, b.client()?);

    let broker = identity("c1", "broker-a", 0, "10.0.0.1:8081");
    let out = via_a.register_broker(header(broker.clone(), 1), vec![topic("orders", 8), topic("audit", 2)]).await?;
    assert!(out.data_changed);
    assert!(routed(&via_a, "orders").await, "the writer reads its own write at once");
    wait_until("B to see A's registration", Duration::from_secs(5), || routed(&via_b, "orders")).await?;
    let route = via_b.query_route("orders").await?;
    assert_eq!(route.brokers[0].addresses[&0], "10.0.0.1:8081");
    assert_eq!(route.queues[0].write_queue_nums, 8);
    assert_eq!(via_b.cluster_info().await?.registry, "etcd");

    // The same broker id from another address is refused by B too: the record A wrote is B's state as well.
    let impostor = identity("c1", "broker-a", 0, "10.6.6.6:8081");
    let err = via_b.register_broker(header(impostor, 2), vec![topic("evil", 1)]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
    assert!(gone(&via_a, "evil").await);

    // A heartbeat through B refreshes the lease A created; same data version through B is no change.
    assert!(!via_b.heartbeat(broker.clone(), version(1)).await?);
    assert!(
        !via_b
            .register_broker(header(broker.clone(), 1), vec![topic("orders", 8), topic("audit", 2)])
            .await?
            .data_changed
    );

    // Admin and KV changes flow both ways too.
    assert!(via_b.delete_topic_route("audit", None).await?);
    wait_until("A to see the route deletion", Duration::from_secs(5), || gone(&via_a, "audit")).await?;
    via_a.put_kv("ORDER_TOPIC_CONFIG", "orders", "broker-a:8").await?;
    wait_until("B to see the KV entry", Duration::from_secs(5), || async {
        via_b.get_kv("ORDER_TOPIC_CONFIG", "orders").await.ok().flatten().is_some()
    })
    .await?;

    via_b.unregister_broker(broker).await?;
    assert!(gone(&via_b, "orders").await, "unregister is immediate on the NameServer that did it");
    wait_until("A to see the unregistration", Duration::from_secs(5), || gone(&via_a, "orders")).await?;
    Ok(())
}

#[tokio::test]
async fn routes_vanish_after_the_lease_ttl_when_heartbeats_stop() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let etcd = Etcd::start(dir.path()).await?;
    let ns = NameServer::etcd(dir.path(), &etcd.endpoint(), PREFIX, 3_000).await?;
    let client = ns.client()?;
    let beating = identity("c1", "beating", 0, "10.0.0.1:8081");
    let silent = identity("c1", "silent", 0, "10.0.0.2:8081");
    client.register_broker(header(beating.clone(), 1), vec![topic("kept", 1)]).await?;
    client.register_broker(header(silent, 1), vec![topic("dropped", 1)]).await?;
    let registered = tokio::time::Instant::now();

    // Heartbeat `beating` every 500 ms while waiting for `silent` to expire (TTL 3 s).
    let heart = {
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                let _ = client.heartbeat(beating.clone(), version(1)).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    wait_until("the silent broker's lease to expire", Duration::from_secs(15), || gone(&client, "dropped")).await?;
    assert!(registered.elapsed() >= Duration::from_secs(2), "expired too early: {:?}", registered.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await; // well past the TTL for `beating` too
    assert!(routed(&client, "kept").await, "heartbeats keep the lease alive");
    heart.abort();
    Ok(())
}

#[tokio::test]
async fn restarted_nameserver_serves_the_full_table_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let etcd = Etcd::start(dir.path()).await?;
    let ns = NameServer::etcd(dir.path(), &etcd.endpoint(), PREFIX, 30_000).await?;
    let topics: Vec<_> = (0..5_000).map(|i| topic(&format!("t-{i}"), 4)).collect();
    ns.client()?.register_broker(header(identity("c1", "b1", 0, "10.0.0.1:8081"), 1), topics).await?;

    let ns = ns.restart().await?;
    let client = ns.client()?;
    // No waiting: readiness implies the first full read is applied.
    assert_eq!(client.query_route("t-4999").await?.brokers[0].broker_name, "b1");
    assert_eq!(client.list_topics(None).await?.len(), 5_000);
    Ok(())
}

#[tokio::test]
async fn etcd_outage_serves_cached_routes_reports_degraded_and_catches_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut etcd = Etcd::start(dir.path()).await?;
    let a = NameServer::etcd(dir.path(), &etcd.endpoint(), PREFIX, 60_000).await?;
    let b = NameServer::etcd(dir.path(), &etcd.endpoint(), PREFIX, 60_000).await?;
    let (via_a, via_b) = (a.client()?, b.client()?);
    via_a.register_broker(header(identity("c1", "b1", 0, "10.0.0.1:8081"), 1), vec![topic("before", 4)]).await?;
    wait_until("B to see the first registration", Duration::from_secs(5), || routed(&via_b, "before")).await?;

    etcd.stop();
    a.wait_health("comet.v1.NameServer", ServingStatus::NotServing).await?;
    assert_eq!(a.health("").await?, ServingStatus::Serving, "the process itself still serves");
    assert!(via_a.cluster_info().await?.degraded);
    assert_eq!(via_a.query_route("before").await?.brokers[0].addresses[&0], "10.0.0.1:8081", "served from cache");
    let mut impatient = fast_client_config(vec![a.addr()]);
    impatient.retries = 0;
    let err = NameServerClient::new(impatient)?
        .register_broker(header(identity("c1", "b2", 0, "10.0.0.2:8081"), 1), vec![topic("during", 4)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");

    etcd.resume().await?;
    a.wait_serving("comet.v1.NameServer").await?;
    b.wait_serving("comet.v1.NameServer").await?;
    assert!(!via_a.cluster_info().await?.degraded);
    via_a.register_broker(header(identity("c1", "b3", 0, "10.0.0.3:8081"), 1), vec![topic("after", 4)]).await?;
    wait_until("B to see a registration made after the outage", Duration::from_secs(10), || routed(&via_b, "after"))
        .await?;
    assert!(routed(&via_b, "before").await, "state from before the outage survived it");
    assert!(gone(&via_b, "during").await, "the refused registration left nothing behind");
    Ok(())
}

#[tokio::test]
async fn nameserver_started_while_etcd_is_down_serves_degraded_then_catches_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut etcd = Etcd::start(dir.path()).await?;
    etcd.stop();
    let ns = NameServer::etcd(dir.path(), &etcd.endpoint(), PREFIX, 30_000).await?;
    assert_eq!(ns.health("comet.v1.NameServer").await?, ServingStatus::NotServing);
    let client = ns.client()?;
    assert!(client.cluster_info().await?.degraded);
    assert!(gone(&client, "anything").await, "no routes known yet, but reads still answer");

    etcd.resume().await?;
    ns.wait_serving("comet.v1.NameServer").await?;
    client.register_broker(header(identity("c1", "b1", 0, "10.0.0.1:8081"), 1), vec![topic("late", 2)]).await?;
    assert!(routed(&client, "late").await);
    Ok(())
}

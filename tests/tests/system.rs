//! Comet system tests: real processes, real network, one test binary. Each test starts its own processes on
//! free ports with its own temp dir, so tests run in parallel (nextest runs each in its own process).

mod broker_admin;
mod broker_messaging;
mod cli_admin;
mod cli_bench;
mod cli_rocketmq_v2;
mod client;
mod client_slave_reads;
mod delay;
mod ha;
mod metrics;
mod nameserver_etcd;
mod nameserver_memory;
mod orderly;
mod push_consumer;
mod retry;
mod rocketmq_v2_pull;
mod rocketmq_v2_receive;
mod rocketmq_v2_send;
mod transactions;

//! System-test support: a harness that starts real Comet processes (and etcd) on free 127.0.0.1 ports with
//! their own temp dirs, waits for readiness signals (never fixed sleeps), and kills everything on drop.
//! The tests themselves live in `tests/system.rs` (one test binary) and talk to the processes over gRPC.

pub mod harness;

//! Comet's storage engine: an mmap CommitLog with consume queues, a key index, group commit, crash recovery and
//! retention.
//!
//! # Layout
//! - [`record`]: the record codec (pure; the byte layout is drawn there and in `docs/storage-format.md`).
//! - `file`: preallocated mapped files and the publish discipline that lets readers run without locks.
//! - `commitlog`: segments, the append path, and recovery (`commitlog/recovery.rs`).
//! - `flush`: group commit for sync flush; `background`: dispatcher, flusher and cleaner threads.
//! - `dispatch`, `consume_queue`, `index`: derived data, rebuilt from the CommitLog when needed.
//! - `checkpoint`: how far derived data is durable, so crash recovery re-reads only what came after.
//! - `retention`: time- and space-based deletion, disk-full refusal.
//! - `replication`: cutting the log back for a slave (`truncate`, `restart_at`); the raw chunk path
//!   (`append_raw`, `read_raw`) lives in `commitlog/raw.rs`.
//! - `store`: the facade, [`Store`].
//!
//! The API is synchronous (no async runtime inside); `Store` is `Send + Sync` and cheap to clone, and appends
//! may come from many threads at once. Callers in async code run appends on a blocking thread.
//!
//! # Durability
//! In sync flush mode an append returns only after an fsync covering its bytes; consumers never see a
//! message before that. A failed write or fsync poisons the store: every later append fails with
//! [`Error::Poisoned`] until it is reopened, so success is never reported for data that may not be durable.

mod background;
mod checkpoint;
mod commitlog;
mod config;
mod consume_queue;
mod dispatch;
mod error;
mod file;
mod flush;
mod index;
mod read;
pub mod record;
mod replication;
mod retention;
mod store;

pub use commitlog::AppendResult;
pub use config::{FlushMode, StoreConfig};
pub use consume_queue::{CQ_ENTRY_SIZE, CqEntry};
pub use error::{Error, Result};
pub use record::{NewMessage, StoredMessage};
pub use retention::RetentionReport;
pub use store::{
    ArrivalListener, GetMessages, GetStatus, MessageFilter, RecoveryReport, Store, StoreStats, VerifyReport,
};

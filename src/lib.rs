//! queuectl: a durable background job queue for shell commands.
//!
//! The library holds the whole engine; `src/main.rs` only parses the command line and maps errors
//! to exit statuses. See ARCHITECTURE.md for the map of modules and how a job flows through them.

pub mod cli;
pub mod crashpoint;
pub mod datadir;
pub mod export;
pub mod logging;
pub mod model;
pub mod owner;
pub mod spool;
pub mod store;
pub mod supervisor;
pub mod worker;

//! The command line: the arguments (clap derive; doc comments are the help text), one function
//! per command, and the client that reaches the store directly or through the spool.

mod args;
pub mod client;
pub mod commands;

pub use args::*;

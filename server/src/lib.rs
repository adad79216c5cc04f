//! The ShardMQ server: the broker (the engine behind the wire protocol), the NameServer, the
//! configuration they share, and the admin commands. The `shardmq` binary (`main.rs`) is a
//! thin command line over these.

pub mod admin;
pub mod broker;
pub mod config;
pub mod namesrv;
pub mod rpc;

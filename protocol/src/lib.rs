//! ShardMQ wire protocol: a sans-IO codec shared by server and client.
//!
//! Not implemented yet: this crate is reserved for it and exports nothing.

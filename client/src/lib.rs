//! ShardMQ client: producer and consumers.
//!
//! Not implemented yet: this crate is reserved for it and exports nothing.

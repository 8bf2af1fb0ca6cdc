//! badge-agent: the gateway's edge agent.
//!
//! The modules follow a swipe through the agent:
//! readers → [`buffer`] (durable sled write-ahead buffer) → [`drain`] (exactly-once state machine)
//! → [`snowpipe`] (Snowpipe Streaming v2 client) — with [`update`] for signed field updates and
//! [`cli`] as the command-line edge.

pub mod buffer;
pub mod cli;
pub mod clock;
pub mod config;
pub mod drain;
pub mod health;
pub mod readers;
pub mod row;
pub mod service;
pub mod snowpipe;
pub mod update;

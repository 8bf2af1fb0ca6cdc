//! badge-agent: the gateway's edge agent.
//!
//! The modules follow a swipe through the agent: [`readers`] (serial, Wiegand GPIO, simulated)
//! → [`buffer`] (durable sled write-ahead buffer) → [`drain`] (exactly-once state machine) →
//! [`snowpipe`] (Snowpipe Streaming v2 client), with [`health`] watching all of them.
//! [`service`] wires them together; [`row`] defines the row sent to Snowflake; [`config`],
//! [`clock`], [`update`] (signed field updates) and [`cli`] sit at the edges.

pub mod buffer;
pub mod cli;
pub mod clock;
pub mod config;
pub mod drain;
pub mod health;
pub mod readers;
pub mod row;
pub mod secret_file;
pub mod service;
pub mod snowpipe;
pub mod update;

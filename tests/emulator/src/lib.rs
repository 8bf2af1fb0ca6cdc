//! `snowpipe-emulator`: a local, faithful emulator of the Snowpipe Streaming v2 ("high-performance")
//! REST API, for tests and demos of badge-gateway. It speaks HTTPS on loopback, verifies key-pair
//! JWTs, issues scoped tokens, models channels with continuation tokens and asynchronous commits,
//! injects faults, and keeps a ledger of committed rows. It is kept honest by running Snowflake's
//! official Python SDK against it (`tests/sdk_conformance.rs`).
//!
//! Start it in-process with [`Emulator::start`]; see the crate README for the wire details.

pub mod auth;
pub mod faults;
pub mod http;
pub mod model;
pub mod ndjson;
mod server;

pub use faults::{FaultAction, FaultPlan, FaultRule, Op};
pub use model::{CommittedRow, PipeId};
pub use server::{Emulator, EmulatorConfig, EmulatorError, EmulatorHandle, RequestRecord};

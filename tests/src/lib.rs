//! Simulators and helpers shared by badge-gateway's end-to-end tests.

pub mod faults;
pub mod harness;
pub mod osdp_sim;
pub mod pyenv;
pub mod sdk_venv;
pub mod serial_sim;

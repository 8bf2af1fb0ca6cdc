//! `snowpipe-emulator`: run the emulator on loopback.
fn main() {}

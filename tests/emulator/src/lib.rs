//! A local Snowpipe Streaming v2 emulator.

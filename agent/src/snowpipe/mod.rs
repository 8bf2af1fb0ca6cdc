//! snowpipe (in progress).

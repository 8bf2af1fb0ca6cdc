//! drain (in progress).

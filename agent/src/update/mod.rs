//! update (in progress).

//! Sans-IO decoders for access-control badge readers.
#![cfg_attr(not(feature = "std"), no_std)]

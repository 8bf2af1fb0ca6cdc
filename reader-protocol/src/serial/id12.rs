//! ID Innovations ID-12LA / ID-20LA (and ID-3LA) ASCII frames.
//!
//! `STX`, 10 ASCII hex data, 2 ASCII hex checksum (XOR of the 5 data bytes), `CR`, `LF`, `ETX`:
//! the "16-byte sandwich". Decoding is done by [`super::Em4100Framer`] configured with
//! [`super::Em4100Framing::Id12`] (or `Any`); this module holds the layout.

use crate::serial::em4100::Em4100Id;
use crate::serial::{CR, ETX, LF};

/// Length of an ID-12LA frame.
pub const FRAME_LEN: usize = 16;

/// The LF byte at position 14.
pub(crate) const LF_BYTE: u8 = LF;

/// A framer accepting ID-12LA / ID-20LA frames only.
pub const fn framer() -> super::Em4100Framer {
    super::Em4100Framer::new(super::Em4100Framing::Id12)
}

/// The 16-byte frame for an ID (tests and emulators).
pub fn encode_frame(id: &Em4100Id) -> [u8; FRAME_LEN] {
    let short = id.rdm6300_frame();
    let mut f = [0u8; FRAME_LEN];
    f[..13].copy_from_slice(&short[..13]);
    f[13] = CR;
    f[14] = LF;
    f[15] = ETX;
    f
}

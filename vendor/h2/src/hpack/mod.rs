// Outpost patch: header blocks are encoded by `Encoder::encode_lean`; the dynamic-table
// encoder stays for h2's own tests and for rebasing the patch on a new h2.
#![cfg_attr(not(test), allow(dead_code))]
mod decoder;
mod encoder;
pub(crate) mod header;
pub(crate) mod huffman;
mod table;

#[cfg(test)]
mod test;

pub use self::decoder::{Decoder, DecoderError, NeedMore};
pub use self::encoder::Encoder;
pub use self::header::{BytesStr, Header};

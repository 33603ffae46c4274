//! The HTTP/1.x parser on any bytes, split into reads at any points and
//! captured in full or in part; `sonde::invariants::check_parser` says what
//! must hold.
//!
//! Input: four control bytes, then the stream, so a corpus file is real
//! traffic behind a short prefix. Byte 0 picks the stream's kind and the
//! request answered; byte 1 the bytes captured per read (0: all); bytes 2-3
//! seed the split points (0: one read).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde::http1::{Answering, Kind};
use sonde::invariants::check_parser;

fuzz_target!(|data: &[u8]| {
    let Some((&[mode, capture, seed_lo, seed_hi], stream)) = data.split_first_chunk::<4>() else {
        return;
    };
    let kind = [None, Some(Kind::Request), Some(Kind::Response)][usize::from(mode % 3)];
    let answering =
        [Answering::Other, Answering::Head, Answering::Connect][usize::from(mode / 3 % 3)];
    let capture = (capture != 0).then_some(usize::from(capture));
    let cuts = cuts(u16::from_le_bytes([seed_lo, seed_hi]), stream.len());
    check_parser(kind, answering, stream, &cuts, capture);
});

/// Read boundaries from `seed`: reads of 1 to `longest` bytes, where the
/// seed's top bits set `longest` (1 to 505) and all of it drives an
/// xorshift that draws each length.
fn cuts(seed: u16, len: usize) -> Vec<usize> {
    if seed == 0 {
        return Vec::new();
    }
    let longest = 1 + usize::from(seed >> 10) * 8;
    let mut state = u32::from(seed) | 0x1_0000;
    let mut at = 0;
    let mut cuts = Vec::new();
    while at < len {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        at += 1 + state as usize % longest;
        cuts.push(at);
    }
    cuts
}

//! The pairing stage on any interleaving of opens, reads and writes (with
//! any payload and any number of bytes not captured), closes, process exits
//! and expiry, over a few connections and processes;
//! `sonde::invariants::check_tracker` says what must hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde::invariants::{check_tracker, Run};

fuzz_target!(|run: Run| check_tracker(&run));

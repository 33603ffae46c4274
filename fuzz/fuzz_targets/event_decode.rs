//! The ring-buffer record decoder on any bytes: the kernel's records are
//! read with `read_unaligned` at fixed offsets, so a record of any length,
//! kind and length fields must give an event or a typed error, never a
//! panic, and a data event's payload must be the bytes right after its
//! fixed part, no more than the record holds and no more than the call moved.
//!
//! Input: one record as the kernel writes it (`probe_common` layouts, native
//! byte order). The seeds are real records of every kind.
#![no_main]

use std::mem::{offset_of, size_of};

use libfuzzer_sys::fuzz_target;
use probe_common::{kind, ConnEvent, DataEvent, EventHeader, COMM_LEN};
use sonde::event::{decode, DecodeError, Direction, Event};

fuzz_target!(|record: &[u8]| {
    let header = size_of::<EventHeader>();
    let kind_at = offset_of!(EventHeader, kind);
    let record_kind = record
        .get(kind_at..kind_at + 4)
        .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")));
    // The fixed part each kind needs before it can be read at all.
    let needed = match record_kind {
        Some(kind::DATA_IN | kind::DATA_OUT) => size_of::<DataEvent>(),
        Some(kind::CONN_OPEN) => size_of::<ConnEvent>(),
        _ => header,
    };
    match decode(record) {
        Ok(event) => {
            assert!(
                record.len() >= needed,
                "decoded a record too short for its kind"
            );
            match event {
                Event::Data(data) => {
                    let expected = if record_kind == Some(kind::DATA_IN) {
                        Direction::In
                    } else {
                        Direction::Out
                    };
                    assert_eq!(data.dir, expected);
                    let start = data.payload.as_ptr() as usize - record.as_ptr() as usize;
                    assert_eq!(
                        start,
                        size_of::<DataEvent>(),
                        "payload not after the fixed part"
                    );
                    assert!(
                        start + data.payload.len() <= record.len(),
                        "payload past the record"
                    );
                    assert!(
                        data.payload.len() <= data.total_len as usize,
                        "captured more than moved"
                    );
                }
                Event::Open(open) => {
                    assert_eq!(record_kind, Some(kind::CONN_OPEN));
                    assert!(!open.comm.contains('\0'), "comm runs past its NUL");
                    // Each byte decodes to at most one U+FFFD (3 bytes).
                    assert!(open.comm.chars().count() <= COMM_LEN);
                }
                Event::Close { .. } => assert_eq!(record_kind, Some(kind::CONN_CLOSE)),
                Event::ProcessExec { .. } => assert_eq!(record_kind, Some(kind::PROC_EXEC)),
                Event::ProcessExit { .. } => assert_eq!(record_kind, Some(kind::PROC_EXIT)),
            }
        }
        Err(error) => {
            // Every error has a label for sonde_decode_errors_total.
            assert!(!error.reason().is_empty());
            match error {
                DecodeError::Short(len) => {
                    assert_eq!(len, record.len());
                    assert!(len < needed, "a record long enough was called short");
                }
                DecodeError::Kind(k) => {
                    assert_eq!(Some(k), record_kind);
                    let known = [
                        kind::DATA_IN,
                        kind::DATA_OUT,
                        kind::CONN_OPEN,
                        kind::CONN_CLOSE,
                        kind::PROC_EXEC,
                        kind::PROC_EXIT,
                    ];
                    assert!(!known.contains(&k), "known kind {k} refused");
                }
                DecodeError::Payload { said, has } => {
                    assert!(matches!(record_kind, Some(kind::DATA_IN | kind::DATA_OUT)));
                    assert_eq!(has, record.len() - size_of::<DataEvent>());
                    let total_at = offset_of!(DataEvent, total_len);
                    let total = u32::from_ne_bytes(
                        record[total_at..total_at + 4].try_into().expect("4 bytes"),
                    );
                    assert!(
                        said > has || said > total as usize,
                        "a fitting payload refused"
                    );
                }
            }
        }
    }
});

//! Stage 2 of the pipeline: decode ring-buffer records into typed events.
//!
//! The records are laid out by `probe-common`; this is the only place that
//! reads them as bytes, so everything after it works on plain Rust values and
//! runs without a kernel (recorded events, unit tests, fuzzing).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use probe_common::{kind, role, ConnEvent, DataEvent, EventHeader};

/// Which way the bytes went, seen from the observed process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The process read them from the socket.
    In,
    /// The process wrote them to the socket.
    Out,
}

/// What the kernel knew of a connection's role when it first saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RoleHint {
    /// Found on its first read or write: the content decides.
    Unknown,
    /// Returned by accept: the process is the server.
    Server,
    /// Set up by connect: the process is the client.
    Client,
}

/// One socket read or write of an HTTP connection. `decode` borrows the
/// payload from the ring-buffer record (`Data<&[u8]>`): the hot path copies
/// nothing. Events kept beyond their record (tests, recordings) own it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data<P = Bytes> {
    pub conn_id: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    /// CLOCK_MONOTONIC nanoseconds when the syscall returned.
    pub ts_ns: u64,
    pub dir: Direction,
    /// Bytes the syscall moved.
    pub total_len: u32,
    /// The first bytes of them (all of them when `payload.len() == total_len`).
    pub payload: P,
}

/// A connection seen for the first time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnOpen {
    pub conn_id: u64,
    pub tgid: u32,
    pub fd: u32,
    pub ts_ns: u64,
    pub role: RoleHint,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// The task's `comm`, a fallback service name for processes gone from /proc.
    pub comm: String,
}

/// A decoded record; `P` is how a data event holds its payload (see `Data`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<P = Bytes> {
    Data(Data<P>),
    Open(ConnOpen),
    Close {
        conn_id: u64,
        tgid: u32,
        fd: u32,
        ts_ns: u64,
    },
    ProcessExec {
        tgid: u32,
    },
    ProcessExit {
        tgid: u32,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    Kind(u32),
    #[error("record says {said} payload bytes but carries {has}")]
    Payload { said: usize, has: usize },
}

impl DecodeError {
    /// Stable label for sonde's own metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Short(_) => "short_record",
            DecodeError::Kind(_) => "unknown_kind",
            DecodeError::Payload { .. } => "bad_payload_length",
        }
    }
}

fn read<T: Copy>(buf: &[u8]) -> Result<T, DecodeError> {
    if buf.len() < std::mem::size_of::<T>() {
        return Err(DecodeError::Short(buf.len()));
    }
    // SAFETY: length checked; T is a repr(C) plain-data type from probe-common
    // and read_unaligned makes no alignment assumption.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record; a data event's payload stays in it.
pub fn decode(record: &[u8]) -> Result<Event<&[u8]>, DecodeError> {
    let hdr: EventHeader = read(record)?;
    match hdr.kind {
        kind::DATA_IN | kind::DATA_OUT => {
            let ev: DataEvent = read(record)?;
            let body = &record[std::mem::size_of::<DataEvent>()..];
            let said = ev.captured as usize;
            if said > body.len() || said > ev.total_len as usize {
                return Err(DecodeError::Payload {
                    said,
                    has: body.len(),
                });
            }
            Ok(Event::Data(Data {
                conn_id: hdr.conn_id,
                tgid: hdr.tgid,
                tid: hdr.tid,
                fd: hdr.fd,
                ts_ns: hdr.ts_ns,
                dir: if hdr.kind == kind::DATA_IN {
                    Direction::In
                } else {
                    Direction::Out
                },
                total_len: ev.total_len,
                payload: &body[..said],
            }))
        }
        kind::CONN_OPEN => {
            let ev: ConnEvent = read(record)?;
            let v6 = ev.family == libc::AF_INET6 as u32;
            let comm_len = ev
                .comm
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(ev.comm.len());
            Ok(Event::Open(ConnOpen {
                conn_id: hdr.conn_id,
                tgid: hdr.tgid,
                fd: hdr.fd,
                ts_ns: hdr.ts_ns,
                role: match ev.role {
                    role::SERVER => RoleHint::Server,
                    role::CLIENT => RoleHint::Client,
                    _ => RoleHint::Unknown,
                },
                local: socket_addr(v6, ev.local_addr, ev.local_port),
                peer: socket_addr(v6, ev.peer_addr, ev.peer_port),
                comm: String::from_utf8_lossy(&ev.comm[..comm_len]).into_owned(),
            }))
        }
        kind::CONN_CLOSE => Ok(Event::Close {
            conn_id: hdr.conn_id,
            tgid: hdr.tgid,
            fd: hdr.fd,
            ts_ns: hdr.ts_ns,
        }),
        kind::PROC_EXEC => Ok(Event::ProcessExec { tgid: hdr.tgid }),
        kind::PROC_EXIT => Ok(Event::ProcessExit { tgid: hdr.tgid }),
        k => Err(DecodeError::Kind(k)),
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener's IPv4 peers) are shown
/// as the IPv4 address they are.
fn socket_addr(v6: bool, raw: [u8; 16], port: u32) -> SocketAddr {
    let ip = if v6 {
        let a = Ipv6Addr::from(raw);
        match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(a),
        }
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    };
    SocketAddr::new(ip, port as u16)
}

/// Builders for raw records, for tests of this module and of later stages
/// that want to go through the real decoder.
#[cfg(test)]
pub(crate) mod record {
    use super::*;

    pub fn data(conn_id: u64, dir: Direction, ts_ns: u64, total: u32, payload: &[u8]) -> Vec<u8> {
        let ev = DataEvent {
            hdr: EventHeader {
                ts_ns,
                conn_id,
                kind: if dir == Direction::In {
                    kind::DATA_IN
                } else {
                    kind::DATA_OUT
                },
                tgid: 10,
                tid: 11,
                fd: 5,
            },
            total_len: total,
            captured: payload.len() as u32,
        };
        let mut v = bytes_of(&ev);
        v.extend_from_slice(payload);
        v
    }

    pub fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: T is a padding-free repr(C) type from probe-common.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::record::*;
    use super::*;

    #[test]
    fn decodes_data_with_payload() {
        let rec = data(7, Direction::In, 99, 300, b"GET / HTTP/1.1\r\n");
        let Event::Data(d) = decode(&rec).unwrap() else {
            panic!("not data")
        };
        assert_eq!(
            (d.conn_id, d.dir, d.ts_ns, d.total_len),
            (7, Direction::In, 99, 300)
        );
        assert_eq!(d.payload, b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(decode(&[0u8; 7]), Err(DecodeError::Short(7)));
        let mut rec = data(1, Direction::Out, 1, 4, b"abcd");
        rec.truncate(rec.len() - 1);
        assert_eq!(decode(&rec), Err(DecodeError::Payload { said: 4, has: 3 }));
        let too_much = data(1, Direction::Out, 1, 2, b"abcd");
        assert!(matches!(
            decode(&too_much),
            Err(DecodeError::Payload { .. })
        ));
        let mut unknown = data(1, Direction::Out, 1, 0, b"");
        unknown[16] = 77;
        assert_eq!(decode(&unknown), Err(DecodeError::Kind(77)));
    }

    #[test]
    fn decodes_conn_open_v4_and_mapped_v6() {
        let mut ev = ConnEvent {
            hdr: EventHeader {
                ts_ns: 5,
                conn_id: 3,
                kind: kind::CONN_OPEN,
                tgid: 1,
                tid: 1,
                fd: 9,
            },
            family: libc::AF_INET as u32,
            role: role::SERVER,
            local_port: 8080,
            peer_port: 50000,
            comm: *b"nginx\0\0\0\0\0\0\0\0\0\0\0",
            ..Default::default()
        };
        ev.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        ev.peer_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        let Event::Open(o) = decode(&bytes_of(&ev)).unwrap() else {
            panic!()
        };
        assert_eq!(o.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(o.peer, "127.0.0.2:50000".parse().unwrap());
        assert_eq!((o.role, o.comm.as_str()), (RoleHint::Server, "nginx"));

        ev.family = libc::AF_INET6 as u32;
        ev.local_addr = "::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap().octets();
        ev.peer_addr = "::1".parse::<Ipv6Addr>().unwrap().octets();
        let Event::Open(o) = decode(&bytes_of(&ev)).unwrap() else {
            panic!()
        };
        assert_eq!(o.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(o.peer, "[::1]:50000".parse().unwrap());
    }
}

//! A minimal HTTP GET for scraping /metrics and probing readiness on
//! loopback, so xtask needs no HTTP client crate.
//!
//! It speaks HTTP/1.0, which forbids chunked responses: the body is
//! everything after the headers until the server closes the connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

pub struct Response {
    pub status: u16,
    pub body: String,
}

pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the response to GET http://{addr}{path}"))?;
    parse(&raw).with_context(|| format!("bad response to GET http://{addr}{path}"))
}

fn parse(raw: &[u8]) -> Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers"))?;
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    Ok(Response {
        status,
        body: body.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses() {
        let ok = parse(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\na 1\nb 2\n").unwrap();
        assert_eq!((ok.status, ok.body.as_str()), (200, "a 1\nb 2\n"));
        let empty = parse(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").unwrap();
        assert_eq!((empty.status, empty.body.as_str()), (503, ""));
        assert!(parse(b"HTTP/1.0 200 OK\r\n").is_err(), "headers never end");
        assert!(parse(b"garbage\r\n\r\n").is_err(), "no status code");
    }
}

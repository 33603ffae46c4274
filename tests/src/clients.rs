//! Clients that drive the servers under observation: raw `TcpStream`s for
//! exact control of the bytes and their timing, and the real tools (curl,
//! wrk, a Python `http.client` process).
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::servers;

/// Long enough for every request the tests make (the slowest holds ~1 s).
const READ_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (an interim `1xx` one included) from `reader`. The
/// body is framed by `Transfer-Encoding: chunked`, `Content-Length`, or the
/// end of the connection, in that order.
pub fn read_response(reader: &mut impl BufRead) -> Result<Response> {
    let status_line = read_line(reader)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    ensure!(
        version.starts_with("HTTP/1."),
        "not an HTTP/1 status line: {status_line:?}"
    );
    let status: u16 = parts
        .next()
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status code in {status_line:?}"))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("malformed header line {line:?}"))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(response);
    }
    let chunked = response
        .header("Transfer-Encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
    if chunked {
        response.body = read_chunked(reader)?;
    } else if let Some(length) = response.header("Content-Length") {
        let length: usize = length.parse().context("bad Content-Length")?;
        response.body = vec![0; length];
        reader.read_exact(&mut response.body).context("read body")?;
    } else {
        reader
            .read_to_end(&mut response.body)
            .context("read body")?;
    }
    Ok(response)
}

fn read_chunked(reader: &mut impl BufRead) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let size_line = read_line(reader)?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size line {size_line:?}"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(reader)?.is_empty() {}
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader
            .read_exact(&mut body[start..])
            .context("read chunk")?;
        ensure!(read_line(reader)?.is_empty(), "chunk not followed by CRLF");
    }
}

fn read_line(reader: &mut impl BufRead) -> Result<String> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).context("read line")?;
    ensure!(
        line.ends_with(b"\n"),
        "connection closed mid-line: {:?}",
        String::from_utf8_lossy(&line)
    );
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    String::from_utf8(line).context("line is not UTF-8")
}

/// `GET path` with only a Host header: a keep-alive HTTP/1.1 request.
pub fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes()
}

/// `POST path` with `body` framed by Content-Length.
pub fn post_request(path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// One client TCP connection with byte-exact writes (Nagle off, so each
/// `send` leaves as its own segment) and HTTP/1 response reading. Reads and
/// writes use the same fd, as most clients do.
pub struct HttpConn {
    stream: BufReader<TcpStream>,
}

impl HttpConn {
    pub fn connect(port: u16) -> Result<HttpConn> {
        let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .with_context(|| format!("connect to 127.0.0.1:{port}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        Ok(HttpConn {
            stream: BufReader::new(stream),
        })
    }

    /// This end of the connection, as the server sees its client.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.stream.get_ref().local_addr()?)
    }

    /// Writes `bytes` in one `write` call's worth (retrying short writes).
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        // Straight to the socket: the reader's buffer only holds unread input.
        self.stream
            .get_mut()
            .write_all(bytes)
            .context("write to server")
    }

    /// Writes each fragment separately with `pause` between them.
    pub fn send_fragments(&mut self, fragments: &[&[u8]], pause: Duration) -> Result<()> {
        for (i, fragment) in fragments.iter().enumerate() {
            if i > 0 {
                thread::sleep(pause);
            }
            self.send(fragment)?;
        }
        Ok(())
    }

    pub fn read_response(&mut self) -> Result<Response> {
        read_response(&mut self.stream)
    }

    /// Sends `GET path` and reads its response.
    pub fn get(&mut self, path: &str) -> Result<Response> {
        self.send(&get_request(path))?;
        self.read_response()
    }
}

/// One `GET path` on a fresh connection that is closed afterwards.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    read_response(&mut BufReader::new(stream))
}

/// Sends `bytes` on a new connection, then reads whatever the server answers
/// until it closes or stays silent for `linger`; returns what was read.
pub fn send_raw(port: u16, bytes: &[u8], linger: Duration) -> Result<Vec<u8>> {
    send_raw_writes(port, &[bytes], Duration::ZERO, linger)
}

/// [`send_raw`] with each of `writes` in a write of its own, `pause` apart.
pub fn send_raw_writes(
    port: u16,
    writes: &[&[u8]],
    pause: Duration,
    linger: Duration,
) -> Result<Vec<u8>> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(linger))?;
    for (i, bytes) in writes.iter().enumerate() {
        if i > 0 {
            thread::sleep(pause);
        }
        // The server may reset the connection on garbage: that is its right.
        if stream.write_all(bytes).is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    Ok(answer)
}

/// A `GET` of the raw `target` bytes (any bytes at all) with `fields`
/// (`Name: value`, without CRLF) after the Host field.
pub fn raw_get(target: &[u8], fields: &[String]) -> Vec<u8> {
    let mut request = [b"GET ", target, b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"].concat();
    for field in fields {
        request.extend_from_slice(field.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    request
}

/// A Redis command as its clients send it (RESP: an array of bulk strings).
pub fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    command.into_bytes()
}

/// What an HTTP/2 client sends first with prior knowledge (RFC 9113 §3.4):
/// the connection preface and a SETTINGS frame (max concurrent streams 100,
/// initial window 65535).
pub fn h2_preface() -> Vec<u8> {
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let settings: [(u16, u32); 2] = [(0x3, 100), (0x4, 65_535)];
    let length = (settings.len() * 6) as u32;
    bytes.extend_from_slice(&length.to_be_bytes()[1..]); // 24-bit length
    bytes.extend_from_slice(&[0x4, 0x0]); // type SETTINGS, no flags
    bytes.extend_from_slice(&0u32.to_be_bytes()); // stream 0
    for (id, value) in settings {
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.extend_from_slice(&value.to_be_bytes());
    }
    bytes
}

/// Deterministic pseudo-random bytes (xorshift64*), so a failure replays.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    // Spread the seed so nearby seeds start far apart; xorshift needs state != 0.
    let mut state = seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// A TLS 1.2/1.3 ClientHello record for `server_name`, as a browser's first
/// bytes on an HTTPS connection look on the wire.
pub fn tls_client_hello(server_name: &str) -> Vec<u8> {
    fn with_u16_len(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }
    let name = server_name.as_bytes();
    // server_name extension: list of (type 0 = host_name, name).
    let mut sni_entry = vec![0u8];
    sni_entry.extend(with_u16_len(name));
    let mut extensions = vec![0x00, 0x00];
    extensions.extend(with_u16_len(&with_u16_len(&sni_entry)));
    // supported_versions: TLS 1.3, TLS 1.2.
    extensions.extend([0x00, 0x2b, 0x00, 0x05, 0x04, 0x03, 0x04, 0x03, 0x03]);

    let mut hello = vec![0x03, 0x03]; // legacy_version TLS 1.2
    hello.extend(random_bytes(0x7115, 32)); // random
    hello.push(0); // empty legacy_session_id
    hello.extend(with_u16_len(&[
        0x13, 0x01, 0x13, 0x02, 0xc0, 0x2f, 0x00, 0x9c,
    ]));
    hello.extend([0x01, 0x00]); // compression methods: null
    hello.extend(with_u16_len(&extensions));

    let mut handshake = vec![0x01]; // ClientHello
    handshake.extend(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend(hello);

    let mut record = vec![0x16, 0x03, 0x01]; // handshake record, TLS 1.0 compat
    record.extend(with_u16_len(&handshake));
    record
}

/// Runs `curl -s` on `url` with `extra` arguments; returns the status code.
pub fn curl(url: &str, extra: &[&str]) -> Result<u16> {
    let output = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "15",
        ])
        .args(extra)
        .arg(url)
        .output()
        .context("run curl")?;
    ensure!(
        output.status.success(),
        "curl {url} failed: {:?}",
        output.status
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("curl printed no status code")
}

#[derive(Clone, Debug)]
pub struct WrkReport {
    /// Responses wrk received ("N requests in ...").
    pub requests: u64,
    pub requests_per_sec: f64,
    pub output: String,
}

/// Runs `wrk -c connections -t threads -d duration url`.
pub fn wrk(url: &str, connections: u32, threads: u32, duration: Duration) -> Result<WrkReport> {
    let output = Command::new("wrk")
        .args(["-c", &connections.to_string(), "-t", &threads.to_string()])
        .args(["-d", &format!("{}s", duration.as_secs())])
        .arg(url)
        .output()
        .context("run wrk (installed by `cargo xtask setup`)")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "wrk failed: {:?}\n{text}",
        output.status
    );
    parse_wrk(&text)
}

fn parse_wrk(text: &str) -> Result<WrkReport> {
    let requests = text
        .lines()
        .find_map(|line| {
            line.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.trim())
        })
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no 'N requests in' line in wrk output:\n{text}"))?;
    let requests_per_sec = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Requests/sec:"))
        .and_then(|rate| rate.trim().parse().ok())
        .with_context(|| format!("no 'Requests/sec:' line in wrk output:\n{text}"))?;
    Ok(WrkReport {
        requests,
        requests_per_sec,
        output: text.to_string(),
    })
}

/// What `servers/client.py` did.
#[derive(Clone, Debug)]
pub struct PythonClientRun {
    /// Basename of the client's executable: its `service_name` in sonde.
    pub service_name: String,
    pub statuses: Vec<u16>,
}

/// Runs a Python process that makes `count` `GET path` requests to
/// 127.0.0.1:`port` over one keep-alive `http.client` connection.
pub fn python_client(port: u16, path: &str, count: u32) -> Result<PythonClientRun> {
    let output = Command::new(servers::python_interpreter())
        .arg(servers::script("client.py"))
        .args([port.to_string(), path.to_string(), count.to_string()])
        .output()
        .context("run client.py")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "client.py failed: {:?}\n{text}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut lines = text.lines();
    let exe = lines.next().context("client.py printed nothing")?;
    let service_name = exe.rsplit('/').next().unwrap_or(exe).to_string();
    let statuses = lines
        .map(|line| line.parse().context("status line"))
        .collect::<Result<_>>()?;
    Ok(PythonClientRun {
        service_name,
        statuses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Response> {
        read_response(&mut BufReader::new(raw))
    }

    #[test]
    fn reads_responses_by_each_framing() {
        let cases: &[(&[u8], u16, &[u8])] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcEXTRA", 200, b"abc"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1;x=y\r\nc\r\n0\r\nT: v\r\n\r\n",
                200,
                b"abc",
            ),
            (b"HTTP/1.0 404 Not Found\r\n\r\nto the end", 404, b"to the end"),
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", 100, b""),
            (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b""),
        ];
        for (raw, status, body) in cases {
            let response = parse(raw).unwrap();
            assert_eq!(response.status, *status, "{}", String::from_utf8_lossy(raw));
            assert_eq!(response.body, *body, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn reads_pipelined_responses_in_order() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 500 E\r\nContent-Length: 1\r\n\r\nb";
        let mut reader = BufReader::new(&raw[..]);
        let first = read_response(&mut reader).unwrap();
        let second = read_response(&mut reader).unwrap();
        assert_eq!((first.status, first.body), (200, b"a".to_vec()));
        assert_eq!((second.status, second.body), (500, b"b".to_vec()));
    }

    #[test]
    fn rejects_non_http() {
        assert!(parse(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n").is_err());
    }

    #[test]
    fn requests_are_well_formed() {
        assert_eq!(
            get_request("/a?b=c"),
            b"GET /a?b=c HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        );
        let post = post_request("/echo", b"xyz");
        assert!(post.ends_with(b"Content-Length: 3\r\n\r\nxyz"));
    }

    #[test]
    fn random_bytes_are_deterministic_and_spread() {
        let a = random_bytes(42, 4096);
        assert_eq!(a, random_bytes(42, 4096));
        assert_ne!(a, random_bytes(43, 4096));
        let distinct: std::collections::HashSet<u8> = a.iter().copied().collect();
        assert!(
            distinct.len() > 200,
            "only {} distinct byte values",
            distinct.len()
        );
    }

    #[test]
    fn binary_protocols_are_framed_as_their_clients_do() {
        assert_eq!(resp_command(&["PING"]), b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(
            resp_command(&["SET", "k", "value"]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n"
        );
        let h2 = h2_preface();
        assert_eq!(&h2[..24], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert_eq!(
            &h2[24..],
            &[0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100, 0, 4, 0, 0, 0xff, 0xff]
        );
        assert_eq!(
            raw_get(b"/\xff", &["A: b".into()]),
            b"GET /\xff HTTP/1.1\r\nHost: 127.0.0.1\r\nA: b\r\n\r\n"
        );
    }

    #[test]
    fn client_hello_lengths_are_consistent() {
        let record = tls_client_hello("example.com");
        assert_eq!(&record[..3], &[0x16, 0x03, 0x01]);
        let record_len = u16::from_be_bytes([record[3], record[4]]) as usize;
        assert_eq!(record_len, record.len() - 5);
        assert_eq!(record[5], 0x01);
        let handshake_len = u32::from_be_bytes([0, record[6], record[7], record[8]]) as usize;
        assert_eq!(handshake_len, record.len() - 9);
        assert!(record.windows(11).any(|w| w == b"example.com"));
    }

    #[test]
    fn parses_wrk_output() {
        let output = "Running 10s test @ http://127.0.0.1:8080/\n  2 threads and 32 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   339.58us  200.17us   8.31ms   90.81%\n    Req/Sec    45.12k     3.10k   52.33k    72.50%\n  898123 requests in 10.00s, 142.74MB read\nRequests/sec:  89799.43\nTransfer/sec:     14.27MB\n";
        let report = parse_wrk(output).unwrap();
        assert_eq!(report.requests, 898_123);
        assert_eq!(report.requests_per_sec, 89_799.43);
        assert!(parse_wrk("garbage").is_err());
    }
}

//! Golden-file tests of parsing and pairing: every `tests/fixtures/http1/*.events`
//! (a recorded event sequence) goes through `conn::Tracker`, and what comes
//! out, rendered one observation a line, must equal the `.expected` beside
//! it. The expected files are the specification: write them by hand.
//! `UPDATE_GOLDEN=1 cargo test -p probe-user --test golden` rewrites them
//! (then review the diff). Privacy: fixtures put the word `secret` in query
//! strings, bodies and header values; no observation may hold it anywhere.
//!
//! Event file format, one event a line (`#` starts a comment):
//!
//! ```text
//! open <conn> <server|client|unknown> <local addr> <peer addr> [tgid=<n>] [ts=<ns>]
//! in <conn> ts=<ns> [total=<bytes moved>] [tid=<n>] <payload>
//! out <conn> ts=<ns> [total=<bytes moved>] [tid=<n>] <payload>
//! close <conn> ts=<ns>
//! exit <tgid>
//! expire now=<ns>
//! ```
//!
//! A payload is one or more quoted strings (escapes `\r \n \t \\ \" \xHH`),
//! each optionally repeated with `*<count>`. `total` defaults to the payload
//! length; a larger one means the kernel copied only the payload (a gap).
//! `tgid` defaults to 100; the thread `tid` of a read or write to its
//! connection's tgid.
use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use sonde::conn::{Tracker, TrackerConfig};
use sonde::event::{ConnOpen, Data, Direction, Event, RoleHint};
use sonde::exchange::{Observation, Request, Side, TraceParent};

const DEFAULT_TGID: u32 = 100;

enum Step {
    Event(Event),
    Expire(u64),
}

enum Token {
    Word(String),
    Bytes(Vec<u8>),
}

fn tokens(line: &str) -> anyhow::Result<Vec<Token>> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut bytes = Vec::new();
            loop {
                match chars.next().ok_or_else(|| anyhow!("unterminated string"))? {
                    '"' => break,
                    '\\' => match chars.next().ok_or_else(|| anyhow!("dangling escape"))? {
                        'r' => bytes.push(b'\r'),
                        'n' => bytes.push(b'\n'),
                        't' => bytes.push(b'\t'),
                        '\\' => bytes.push(b'\\'),
                        '"' => bytes.push(b'"'),
                        'x' => {
                            let hex: String = chars.by_ref().take(2).collect();
                            bytes.push(
                                u8::from_str_radix(&hex, 16)
                                    .with_context(|| format!("bad \\x{hex}"))?,
                            );
                        }
                        other => bail!("unknown escape \\{other}"),
                    },
                    c => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            if chars.peek() == Some(&'*') {
                chars.next();
                let count: String = chars.by_ref().take_while(|c| !c.is_whitespace()).collect();
                bytes = bytes.repeat(
                    count
                        .parse()
                        .with_context(|| format!("bad repeat {count}"))?,
                );
            }
            out.push(Token::Bytes(bytes));
        } else {
            out.push(Token::Word(
                chars.by_ref().take_while(|c| !c.is_whitespace()).collect(),
            ));
        }
    }
    Ok(out)
}

/// `key=value` words into a map, the rest (payload strings) concatenated.
fn fields(tokens: &[Token]) -> anyhow::Result<(HashMap<&str, u64>, Vec<u8>)> {
    let mut map = HashMap::new();
    let mut payload = Vec::new();
    for t in tokens {
        match t {
            Token::Word(w) => {
                let (k, v) = w
                    .split_once('=')
                    .ok_or_else(|| anyhow!("expected key=value, got {w}"))?;
                map.insert(k, v.parse().with_context(|| format!("bad number in {w}"))?);
            }
            Token::Bytes(b) => payload.extend_from_slice(b),
        }
    }
    Ok((map, payload))
}

fn word(tokens: &[Token], i: usize) -> anyhow::Result<&str> {
    match tokens.get(i) {
        Some(Token::Word(w)) => Ok(w),
        _ => bail!("missing word {i}"),
    }
}

fn parse_events(text: &str) -> anyhow::Result<Vec<Step>> {
    let mut tgids = HashMap::new();
    let mut steps = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let step =
            parse_line(line, &mut tgids).with_context(|| format!("line {}: {line}", n + 1))?;
        steps.push(step);
    }
    Ok(steps)
}

fn parse_line(line: &str, tgids: &mut HashMap<u64, u32>) -> anyhow::Result<Step> {
    let t = tokens(line)?;
    let kind = word(&t, 0)?;
    if kind == "expire" {
        let (f, _) = fields(&t[1..])?;
        return Ok(Step::Expire(
            *f.get("now").ok_or_else(|| anyhow!("expire needs now="))?,
        ));
    }
    if kind == "exit" {
        return Ok(Step::Event(Event::ProcessExit {
            tgid: word(&t, 1)?.parse()?,
        }));
    }
    let conn_id: u64 = word(&t, 1)?.parse()?;
    let tgid = tgids.get(&conn_id).copied().unwrap_or(DEFAULT_TGID);
    let event = match kind {
        "open" => {
            let role = match word(&t, 2)? {
                "server" => RoleHint::Server,
                "client" => RoleHint::Client,
                "unknown" => RoleHint::Unknown,
                other => bail!("unknown role {other}"),
            };
            let (f, _) = fields(&t[5..])?;
            let tgid = f
                .get("tgid")
                .map_or(Ok(DEFAULT_TGID), |&v| u32::try_from(v))?;
            tgids.insert(conn_id, tgid);
            Event::Open(ConnOpen {
                conn_id,
                tgid,
                fd: 3,
                ts_ns: f.get("ts").copied().unwrap_or(0),
                role,
                local: word(&t, 3)?.parse()?,
                peer: word(&t, 4)?.parse()?,
                comm: "fixture".into(),
            })
        }
        "in" | "out" => {
            let (f, payload) = fields(&t[2..])?;
            let total = f
                .get("total")
                .map_or(Ok(payload.len() as u32), |&v| u32::try_from(v))?;
            if (total as usize) < payload.len() {
                bail!("total {total} is less than the payload");
            }
            Event::Data(Data {
                conn_id,
                tgid,
                tid: f.get("tid").map_or(Ok(tgid), |&v| u32::try_from(v))?,
                fd: 3,
                ts_ns: *f.get("ts").ok_or_else(|| anyhow!("data needs ts="))?,
                dir: if kind == "in" {
                    Direction::In
                } else {
                    Direction::Out
                },
                total_len: total,
                payload: Bytes::from(payload),
            })
        }
        "close" => {
            let (f, _) = fields(&t[2..])?;
            Event::Close {
                conn_id,
                tgid,
                fd: 3,
                ts_ns: *f.get("ts").ok_or_else(|| anyhow!("close needs ts="))?,
            }
        }
        other => bail!("unknown event {other}"),
    };
    Ok(Step::Event(event))
}

fn side(s: Side) -> &'static str {
    match s {
        Side::Server => "server",
        Side::Client => "client",
    }
}

fn request(r: &Request) -> String {
    let cut = if r.path_truncated {
        " path_truncated"
    } else {
        ""
    };
    let trace = r.trace.as_deref().map(trace).unwrap_or_default();
    format!("{} {} HTTP/{}{cut}{trace}", r.method, r.path, r.version)
}

fn trace(t: &TraceParent) -> String {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let state = t
        .tracestate
        .as_ref()
        .map(|s| format!(" tracestate=\"{s}\""))
        .unwrap_or_default();
    format!(
        " trace={} parent={} flags={:02x}{state}",
        hex(&t.trace_id),
        hex(&t.parent_id),
        t.flags
    )
}

fn render(o: &Observation) -> String {
    match o {
        Observation::Started(s) => format!(
            "started #{} conn={} {} {} seq={} tid={} start={}",
            s.id,
            s.at.conn_id,
            side(s.at.side),
            request(&s.request),
            s.seq,
            s.tid,
            s.start_ns
        ),
        Observation::Finished(f) => format!(
            "finished #{} conn={} {} {} seq={} tid={} status={} start={} end={} req_body={} resp_body={}{}",
            f.id,
            f.at.conn_id,
            side(f.at.side),
            request(&f.request),
            f.seq,
            f.tid,
            f.status,
            f.start_ns,
            f.end_ns,
            f.request_body_bytes,
            f.response_body_bytes,
            if f.complete { "" } else { " incomplete" }
        ),
        Observation::Abandoned { id, at, reason } => {
            format!(
                "abandoned #{id} conn={} {} {}",
                at.conn_id,
                side(at.side),
                reason.label()
            )
        }
        Observation::Anomaly(a) => format!("anomaly {}", a.label()),
    }
}

fn replay(steps: &[Step]) -> anyhow::Result<String> {
    let mut tracker = Tracker::new(TrackerConfig::default());
    let mut out = Vec::new();
    for step in steps {
        match step {
            Step::Event(e) => tracker.handle(e, &mut out),
            Step::Expire(now) => tracker.expire(*now, &mut out),
        }
    }
    // Every field of every observation, rendered or not.
    if format!("{out:?}").contains("secret") {
        bail!("an observation holds a secret: {out:?}");
    }
    Ok(out.iter().map(|o| render(o) + "\n").collect())
}

#[test]
fn golden_http1() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/http1");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut cases: Vec<_> = fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "events"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 12,
        "only {} fixtures in {}",
        cases.len(),
        dir.display()
    );
    let mut failures = Vec::new();
    for events in &cases {
        let steps = parse_events(&fs::read_to_string(events)?)
            .with_context(|| events.display().to_string())?;
        let got = replay(&steps).with_context(|| events.display().to_string())?;
        let expected_path = events.with_extension("expected");
        if update {
            fs::write(&expected_path, &got)?;
            continue;
        }
        let want = fs::read_to_string(&expected_path)
            .with_context(|| expected_path.display().to_string())?;
        if got != want {
            failures.push(format!(
                "{}:\n--- expected\n{want}--- got\n{got}",
                events.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

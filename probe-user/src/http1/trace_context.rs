//! W3C Trace Context (level 1) for the request parser: picks `traceparent`
//! and `tracestate` out of a request head's fields while the parser scans
//! them, and validates them strictly once the head is whole. A malformed
//! `traceparent` is never trusted; the caller counts it. These two are the
//! only header values sonde ever keeps.
use super::Field;
use crate::exchange::{Request, TraceParent};

/// A version-00 `traceparent`: `vv-<32 hex>-<16 hex>-<2 hex>`. Later versions
/// start with the same 55 characters.
const TRACEPARENT_LEN: usize = 55;
/// Longest `tracestate` kept (its field lines joined by `,`): the length
/// level 1 asks every vendor to propagate.
const MAX_TRACESTATE: usize = 512;
/// List members a `tracestate` may hold.
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// The trace-context fields of one request head, borrowed from it.
#[derive(Debug, Default)]
pub(super) struct TraceHeaders<'a> {
    traceparent: Option<&'a [u8]>,
    /// Sent twice, or continued on an obs-fold line: malformed whatever it says.
    traceparent_spoilt: bool,
    /// Field line values, OWS trimmed; a field sent on several lines is one
    /// comma-separated list (RFC 9110 §5.3).
    tracestate: Vec<&'a [u8]>,
    /// Bytes of `tracestate` as the joined list.
    tracestate_len: usize,
    /// Too long, or continued on an obs-fold line: dropped.
    tracestate_spoilt: bool,
    /// The field of the previous line, for an obs-fold continuing it.
    last: Option<Field>,
}

impl<'a> TraceHeaders<'a> {
    /// Notes a field line of the head (every one, for `fold`); `value` is
    /// everything after the colon.
    pub(super) fn read(&mut self, field: Option<Field>, value: &'a [u8]) {
        self.last = field;
        match field {
            Some(Field::Traceparent) => {
                self.traceparent_spoilt |= self.traceparent.replace(trim_ows(value)).is_some();
            }
            Some(Field::Tracestate) => {
                let value = trim_ows(value);
                if value.is_empty() || self.tracestate_spoilt {
                    return;
                }
                self.tracestate_len += value.len() + usize::from(!self.tracestate.is_empty());
                if self.tracestate_len > MAX_TRACESTATE {
                    self.tracestate_spoilt = true;
                    self.tracestate = Vec::new();
                } else {
                    self.tracestate.push(value);
                }
            }
            _ => {}
        }
    }

    /// An obs-fold line (RFC 9112 §5.2) continues the previous field.
    pub(super) fn fold(&mut self) {
        match self.last {
            Some(Field::Traceparent) => self.traceparent_spoilt = true,
            Some(Field::Tracestate) => self.tracestate_spoilt = true,
            _ => {}
        }
    }

    /// Sets `request.trace` from a valid `traceparent`. True when the head
    /// carried a `traceparent` that is not valid (ignored: `trace` stays None).
    pub(super) fn attach(&self, request: &mut Request) -> bool {
        let Some(value) = self.traceparent else {
            return false;
        };
        match traceparent(value) {
            Some(mut context) if !self.traceparent_spoilt => {
                if !self.tracestate_spoilt {
                    context.tracestate = tracestate(&self.tracestate);
                }
                request.trace = Some(Box::new(context));
                false
            }
            _ => true,
        }
    }
}

/// Optional whitespace around a field value (RFC 9110 §5.5): SP and HTAB only.
fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// Parses a `traceparent` value (OWS already trimmed), with `tracestate` None.
fn traceparent(v: &[u8]) -> Option<TraceParent> {
    if v.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = lower_hex::<1>(&v[..2])?[0];
    let rest_ok = match version {
        0xff => false,
        0 => v.len() == TRACEPARENT_LEN,
        // A later version may append fields, each after a dash.
        _ => v.len() == TRACEPARENT_LEN || v[TRACEPARENT_LEN] == b'-',
    };
    if !rest_ok || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = lower_hex::<16>(&v[3..35])?;
    let parent_id = lower_hex::<8>(&v[36..52])?;
    let flags = lower_hex::<1>(&v[53..55])?[0];
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        // Level 1 defines only `sampled`, and for version 00 only.
        flags: if version == 0 { flags } else { flags & 1 },
        tracestate: None,
    })
}

/// Value of each lower-case hex digit (`HEXDIGLC`), 0xff for other bytes.
const HEX_DIGIT: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut d = 0;
    while d < 16 {
        table[b"0123456789abcdef"[d] as usize] = d as u8;
        d += 1;
    }
    table
};

/// Exactly `2 * N` lower-case hex digits. Run on every traced request: a
/// table lookup and one check per byte.
fn lower_hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    let mut invalid = 0;
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (high, low) = (
            HEX_DIGIT[usize::from(pair[0])],
            HEX_DIGIT[usize::from(pair[1])],
        );
        invalid |= high | low;
        *byte = high << 4 | low;
    }
    (invalid & 0xf0 == 0).then_some(out)
}

/// The `tracestate` list of the field lines `values`, members joined by `,`
/// (empty members and OWS dropped); None when empty or invalid: a key or a
/// value out of grammar, a key repeated, more than 32 members.
fn tracestate(values: &[&[u8]]) -> Option<String> {
    let mut members: Vec<&[u8]> = Vec::new();
    for value in values {
        for member in value.split(|&b| b == b',').map(trim_ows) {
            if member.is_empty() {
                continue;
            }
            let eq = member.iter().position(|&b| b == b'=')?;
            let key = &member[..eq];
            if !is_key(key) || !is_value(&member[eq + 1..]) {
                return None;
            }
            // Bounded first: the check for repeated keys is quadratic.
            if members.len() == MAX_TRACESTATE_MEMBERS
                || members.iter().any(|m| m.get(..=eq) == member.get(..=eq))
            {
                return None;
            }
            members.push(member);
        }
    }
    if members.is_empty() {
        return None;
    }
    // Every byte was checked to be printable ASCII.
    String::from_utf8(members.join(&b","[..])).ok()
}

/// `simple-key` or `tenant-id@system-id`.
fn is_key(key: &[u8]) -> bool {
    let lcalpha = |b: &u8| b.is_ascii_lowercase();
    let first_of_tenant = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let rest = |s: &[u8]| {
        s.iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/".contains(&b))
    };
    match key.iter().position(|&b| b == b'@') {
        None => (1..=256).contains(&key.len()) && lcalpha(&key[0]) && rest(&key[1..]),
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && first_of_tenant(&tenant[0])
                && rest(&tenant[1..])
                && (1..=14).contains(&system.len())
                && lcalpha(&system[0])
                && rest(&system[1..])
        }
    }
}

/// 1 to 256 printable ASCII characters but `,` and `=`, not ending in a space.
fn is_value(value: &[u8]) -> bool {
    let nblk = |b: u8| matches!(b, 0x21..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e);
    (1..=256).contains(&value.len())
        && value.iter().all(|&b| b == b' ' || nblk(b))
        && value.last().is_some_and(|&b| nblk(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    fn request() -> Request {
        Request {
            method: "GET".into(),
            path: "/".into(),
            path_truncated: false,
            version: "1.1",
            trace: None,
        }
    }

    /// A field line: name and value; a None name is an obs-fold line.
    type Line<'a> = (Option<&'a str>, &'a str);

    /// Reads `fields` as one head and renders the outcome: `bad`, `none`,
    /// or `<trace>-<parent>-<flags> [tracestate]`.
    fn outcome(fields: &[Line<'_>]) -> String {
        let mut headers = TraceHeaders::default();
        for (name, value) in fields {
            match name {
                Some(name) => headers.read(Field::of(name.as_bytes()), value.as_bytes()),
                None => headers.fold(),
            }
        }
        let mut request = request();
        if headers.attach(&mut request) {
            assert_eq!(request.trace, None);
            return "bad".into();
        }
        let Some(t) = request.trace else {
            return "none".into();
        };
        let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let state = t.tracestate.map(|s| format!(" [{s}]")).unwrap_or_default();
        format!(
            "{}-{}-{:02x}{state}",
            hex(&t.trace_id),
            hex(&t.parent_id),
            t.flags
        )
    }

    fn tp(value: &str) -> String {
        outcome(&[(Some("traceparent"), value)])
    }

    #[test]
    fn traceparent_table() {
        let ok = |flags: &str| format!("{TRACE}-{PARENT}-{flags}");
        let cases: Vec<(&str, String, String)> = vec![
            // Valid (the W3C specification's examples and test suite).
            ("sampled", format!("00-{TRACE}-{PARENT}-01"), ok("01")),
            ("not sampled", format!("00-{TRACE}-{PARENT}-00"), ok("00")),
            (
                "unknown flags kept for version 00",
                format!("00-{TRACE}-{PARENT}-ff"),
                ok("ff"),
            ),
            (
                "leading space",
                format!(" 00-{TRACE}-{PARENT}-01"),
                ok("01"),
            ),
            (
                "trailing tab",
                format!("00-{TRACE}-{PARENT}-01\t"),
                ok("01"),
            ),
            (
                "OWS both sides",
                format!("\t 00-{TRACE}-{PARENT}-01 \t"),
                ok("01"),
            ),
            (
                "future version",
                format!("cc-{TRACE}-{PARENT}-01"),
                ok("01"),
            ),
            (
                "future version with more fields",
                format!("cc-{TRACE}-{PARENT}-01-what-the-future-will-be-like"),
                ok("01"),
            ),
            (
                "future version keeps only sampled",
                format!("01-{TRACE}-{PARENT}-03"),
                ok("01"),
            ),
            (
                "future version, not sampled",
                format!("fe-{TRACE}-{PARENT}-02"),
                ok("00"),
            ),
            // Invalid.
            ("empty", String::new(), "bad".into()),
            (
                "version ff",
                format!("ff-{TRACE}-{PARENT}-01"),
                "bad".into(),
            ),
            (
                "version 00 with more fields",
                format!("00-{TRACE}-{PARENT}-01-what-the-future-will-be-like"),
                "bad".into(),
            ),
            (
                "version 00 with a trailing byte",
                format!("00-{TRACE}-{PARENT}-01."),
                "bad".into(),
            ),
            (
                "future version, extra fields without a dash",
                format!("cc-{TRACE}-{PARENT}-01.what-the-future-will-be-like"),
                "bad".into(),
            ),
            (
                "upper-case version",
                format!("0A-{TRACE}-{PARENT}-01"),
                "bad".into(),
            ),
            (
                "version illegal character",
                format!(".0-{TRACE}-{PARENT}-01"),
                "bad".into(),
            ),
            (
                "version too short",
                format!("0-{TRACE}-{PARENT}-01"),
                "bad".into(),
            ),
            (
                "version too long",
                format!("000-{TRACE}-{PARENT}-01"),
                "bad".into(),
            ),
            (
                "upper-case trace id",
                format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
                "bad".into(),
            ),
            (
                "upper-case parent id",
                format!("00-{TRACE}-{}-01", PARENT.to_uppercase()),
                "bad".into(),
            ),
            (
                "upper-case flags",
                format!("00-{TRACE}-{PARENT}-0F"),
                "bad".into(),
            ),
            (
                "all-zero trace id",
                format!("00-{}-{PARENT}-01", "0".repeat(32)),
                "bad".into(),
            ),
            (
                "all-zero parent id",
                format!("00-{TRACE}-{}-01", "0".repeat(16)),
                "bad".into(),
            ),
            (
                "trace id too short",
                format!("00-{}-{PARENT}-01", &TRACE[1..]),
                "bad".into(),
            ),
            (
                "trace id too long",
                format!("00-{TRACE}0-{PARENT}-01"),
                "bad".into(),
            ),
            (
                "parent id too short",
                format!("00-{TRACE}-{}-01", &PARENT[1..]),
                "bad".into(),
            ),
            (
                "parent id too long",
                format!("00-{TRACE}-{PARENT}0-01"),
                "bad".into(),
            ),
            (
                "flags too short",
                format!("00-{TRACE}-{PARENT}-1"),
                "bad".into(),
            ),
            (
                "flags too long",
                format!("00-{TRACE}-{PARENT}-001"),
                "bad".into(),
            ),
            (
                "flags illegal character",
                format!("00-{TRACE}-{PARENT}-0."),
                "bad".into(),
            ),
            (
                "trace id illegal character",
                format!("00-{}.-{PARENT}-01", &TRACE[1..]),
                "bad".into(),
            ),
            (
                "parent id illegal character",
                format!("00-{TRACE}-{}g-01", &PARENT[1..]),
                "bad".into(),
            ),
            (
                "underscores for dashes",
                format!("00_{TRACE}_{PARENT}_01"),
                "bad".into(),
            ),
            (
                "whitespace other than OWS",
                format!("\x0b00-{TRACE}-{PARENT}-01"),
                "bad".into(),
            ),
            (
                "space inside",
                format!("00-{TRACE} -{PARENT}-01"),
                "bad".into(),
            ),
            (
                "non-ASCII in place of hex",
                format!("00-{}é-{PARENT}-01", &TRACE[2..]),
                "bad".into(),
            ),
        ];
        for (name, value, want) in &cases {
            assert_eq!(tp(value), *want, "case: {name} ({value:?})");
        }
    }

    #[test]
    fn fields_of_the_head() {
        let valid = format!("00-{TRACE}-{PARENT}-01");
        let want = format!("{TRACE}-{PARENT}-01");
        let cases: Vec<(&str, Vec<Line<'_>>, String)> = vec![
            ("none", vec![(Some("host"), "x")], "none".into()),
            (
                "name is case-insensitive",
                vec![(Some("TraceParent"), &valid)],
                want.clone(),
            ),
            (
                "upper-case name",
                vec![(Some("TRACEPARENT"), &valid)],
                want.clone(),
            ),
            (
                "sent twice, even identical",
                vec![(Some("traceparent"), &valid), (Some("traceparent"), &valid)],
                "bad".into(),
            ),
            (
                "continued by an obs-fold",
                vec![(Some("traceparent"), &valid), (None, "  x")],
                "bad".into(),
            ),
            (
                "an obs-fold of another field is harmless",
                vec![
                    (Some("traceparent"), &valid),
                    (Some("x"), "y"),
                    (None, " z"),
                ],
                want.clone(),
            ),
            (
                "a look-alike name",
                vec![(Some("traceparent-x"), "garbage")],
                "none".into(),
            ),
            (
                "tracestate alone",
                vec![(Some("tracestate"), "congo=t61rcWkgMzE")],
                "none".into(),
            ),
            (
                "tracestate before traceparent, on two lines",
                vec![
                    (Some("tracestate"), " rojo=00f067aa0ba902b7 "),
                    (Some("traceparent"), &valid),
                    (Some("Tracestate"), "congo=t61rcWkgMzE,, x@y=a b"),
                ],
                format!("{want} [rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,x@y=a b]"),
            ),
            (
                "tracestate continued by an obs-fold is dropped",
                vec![
                    (Some("traceparent"), &valid),
                    (Some("tracestate"), "a=1"),
                    (None, " b=2"),
                ],
                want.clone(),
            ),
            (
                "a bad tracestate is dropped, the traceparent kept",
                vec![(Some("traceparent"), &valid), (Some("tracestate"), "A=1")],
                want.clone(),
            ),
        ];
        for (name, fields, want) in &cases {
            assert_eq!(outcome(fields), *want, "case: {name}");
        }
    }

    #[test]
    fn tracestate_table() {
        let long_key = format!("a{}", "b".repeat(255));
        let too_long_key = format!("a{}", "b".repeat(256));
        let thirty_two: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
        let thirty_three: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        let cases: Vec<(&str, Vec<String>, Option<String>)> = vec![
            (
                "one member",
                vec!["congo=t61rcWkgMzE".into()],
                Some("congo=t61rcWkgMzE".into()),
            ),
            (
                "OWS and empty members",
                vec![" a=1 ,\t,b=2\t".into()],
                Some("a=1,b=2".into()),
            ),
            ("only empty members", vec![" , ,".into()], None),
            (
                "multi-tenant key",
                vec!["0tenant@sys-1=x".into()],
                Some("0tenant@sys-1=x".into()),
            ),
            (
                "key characters",
                vec!["a_-*/9=x".into()],
                Some("a_-*/9=x".into()),
            ),
            (
                "key of 256",
                vec![format!("{long_key}=1")],
                Some(format!("{long_key}=1")),
            ),
            ("key of 257", vec![format!("{too_long_key}=1")], None),
            ("key starting with a digit", vec!["1a=x".into()], None),
            ("upper-case key", vec!["Congo=x".into()], None),
            (
                "system id too long",
                vec![format!("t@{}=x", "s".repeat(15))],
                None,
            ),
            (
                "system id starting with a digit",
                vec!["t@1s=x".into()],
                None,
            ),
            ("empty tenant", vec!["@s=x".into()], None),
            ("two @", vec!["a@b@c=x".into()], None),
            ("no =", vec!["congo".into()], None),
            ("empty value", vec!["a=".into()], None),
            ("= in value", vec!["a=b=c".into()], None),
            (
                "space inside a value",
                vec!["a=b c".into()],
                Some("a=b c".into()),
            ),
            ("control character in value", vec!["a=b\x01".into()], None),
            ("non-ASCII in value", vec!["a=café".into()], None),
            (
                "value of 256",
                vec![format!("a={}", "v".repeat(256))],
                Some(format!("a={}", "v".repeat(256))),
            ),
            ("value of 257", vec![format!("a={}", "v".repeat(257))], None),
            ("repeated key", vec!["a=1,b=2".into(), "a=3".into()], None),
            (
                "key prefix is another key",
                vec!["ab=1,a=2".into()],
                Some("ab=1,a=2".into()),
            ),
            (
                "32 members",
                vec![thirty_two.join(",")],
                Some(thirty_two.join(",")),
            ),
            ("33 members", vec![thirty_three.join(",")], None),
        ];
        for (name, values, want) in &cases {
            let values: Vec<&[u8]> = values.iter().map(|v| trim_ows(v.as_bytes())).collect();
            assert_eq!(tracestate(&values), *want, "case: {name}");
        }
    }

    #[test]
    fn tracestate_is_bounded() {
        let valid = format!("00-{TRACE}-{PARENT}-01");
        let member = |i: usize| format!("k{i:02}={}", "v".repeat(60)); // 64 bytes
        let state =
            |members: std::ops::Range<usize>| members.map(member).collect::<Vec<_>>().join(",");
        // 8 members: 8 * 64 + 7 commas = 519 bytes; 7 members: 454.
        for (fields, kept) in [
            (vec![state(0..7)], true),
            (vec![state(0..8)], false),
            (vec![state(0..4), state(4..7)], true),
            (vec![state(0..4), state(4..8)], false),
        ] {
            let mut headers = TraceHeaders::default();
            headers.read(Some(Field::Traceparent), valid.as_bytes());
            for f in &fields {
                headers.read(Some(Field::Tracestate), f.as_bytes());
            }
            let mut request = request();
            assert!(!headers.attach(&mut request));
            let got = request.trace.and_then(|t| t.tracestate);
            assert_eq!(got.is_some(), kept, "{} lines", fields.len());
            if let Some(s) = got {
                assert_eq!(s, fields.join(","));
                assert!(s.len() <= MAX_TRACESTATE);
            }
        }
    }

    #[test]
    fn sampled_is_bit_zero() {
        let t = |flags| TraceParent {
            trace_id: [1; 16],
            parent_id: [1; 8],
            flags,
            tracestate: None,
        };
        assert!(t(0x01).sampled());
        assert!(t(0x03).sampled());
        assert!(!t(0x00).sampled());
        assert!(!t(0x02).sampled());
    }
}

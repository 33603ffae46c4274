//! A parser for the Prometheus text exposition format, enough to read
//! sonde's /metrics for the demo's summary: `name{label="value",...} value
//! [timestamp]` lines; comments (`# HELP`, `# TYPE`) and blank lines are
//! skipped; label values may contain `\\`, `\"` and `\n` escapes.

use anyhow::{anyhow, bail, Context, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// In exposition order.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(label, _)| label == name)
            .map(|(_, value)| value.as_str())
    }
}

pub fn parse(text: &str) -> Result<Vec<Sample>> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let line = line.trim_start();
            !line.is_empty() && !line.starts_with('#')
        })
        .map(|(index, line)| {
            parse_line(line).with_context(|| format!("line {}: {line:?}", index + 1))
        })
        .collect()
}

fn parse_line(line: &str) -> Result<Sample> {
    let line = line.trim_start();
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let (name, mut rest) = line.split_at(name_end);
    if name.is_empty() {
        bail!("no metric name");
    }
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.trim_start().strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or_else(|| anyhow!("no value"))?;
    // Rust's float syntax covers the format's `+Inf`, `-Inf` and `NaN`.
    let value: f64 = value.parse().map_err(|_| anyhow!("bad value {value:?}"))?;
    // A timestamp may follow; the summary does not need it.
    if fields.nth(1).is_some() {
        bail!("unexpected text after the value");
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `l1="v1",l2="v2"}` (the text after `{`) into `labels`; returns
/// what follows the closing brace.
fn parse_labels<'a>(mut rest: &'a str, labels: &mut Vec<(String, String)>) -> Result<&'a str> {
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let (name, after_name) = rest
            .split_once('=')
            .ok_or_else(|| anyhow!("label without '='"))?;
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("bad label name {name:?}");
        }
        let quoted = after_name
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| anyhow!("label {name} has an unquoted value"))?;
        let (value, after_value) = unescape_until_quote(quoted)
            .ok_or_else(|| anyhow!("label {name} has an unterminated value"))?;
        labels.push((name.to_owned(), value));
        rest = after_value.trim_start();
        if let Some(after_comma) = rest.strip_prefix(',') {
            rest = after_comma;
        } else if !rest.starts_with('}') {
            bail!("expected ',' or '}}' after label {name}");
        }
    }
}

/// Reads an escaped label value up to its closing quote; returns the value
/// and the text after the quote.
fn unescape_until_quote(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[index + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                // `\\` and `\"`; anything else stands for itself.
                other => value.push(other),
            },
            other => value.push(other),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(l, v)| ((*l).to_owned(), (*v).to_owned()))
                .collect(),
            value,
        }
    }

    #[test]
    fn parses_lines() {
        let cases: &[(&str, Sample)] = &[
            ("up 1", sample("up", &[], 1.0)),
            ("up{} 0", sample("up", &[], 0.0)),
            (
                r#"http_server_active_requests{service_name="shop",http_route="/api/users/{id}"} 3"#,
                sample(
                    "http_server_active_requests",
                    &[("service_name", "shop"), ("http_route", "/api/users/{id}")],
                    3.0,
                ),
            ),
            (
                r#"h_bucket{le="+Inf"} 17 1700000000000"#,
                sample("h_bucket", &[("le", "+Inf")], 17.0),
            ),
            (
                r#"x{a="say \"hi\"",b="back\\slash",c="two\nlines"} 2.5e-3"#,
                sample(
                    "x",
                    &[
                        ("a", r#"say "hi""#),
                        ("b", r"back\slash"),
                        ("c", "two\nlines"),
                    ],
                    0.0025,
                ),
            ),
            (
                r#"x{a="}, {",} -Inf"#,
                sample("x", &[("a", "}, {")], f64::NEG_INFINITY),
            ),
            (
                r#"  x { a = "1" , b="2" }   +Inf"#,
                sample("x", &[("a", "1"), ("b", "2")], f64::INFINITY),
            ),
            (
                "process_cpu:seconds_total 12",
                sample("process_cpu:seconds_total", &[], 12.0),
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(&parse_line(line).unwrap(), expected, "{line}");
        }
    }

    #[test]
    fn parses_nan() {
        assert!(parse_line("x NaN").unwrap().value.is_nan());
    }

    #[test]
    fn rejects_malformed_lines() {
        let cases = [
            "{a=\"1\"} 1",
            "x",
            "x{a=\"1\"}",
            "x{a=1} 1",
            "x{a=\"1} 1",
            "x{a=\"1\" b=\"2\"} 1",
            "x{=\"1\"} 1",
            "x{a b=\"1\"} 1",
            "x one",
            "x 1 2 3",
        ];
        for line in cases {
            assert!(parse_line(line).is_err(), "{line}");
        }
    }

    #[test]
    fn skips_comments_and_blank_lines() {
        let text = "# HELP up Whether up.\n# TYPE up gauge\n\nup{job=\"a\"} 1\n  # indented\nup{job=\"b\"} 0\n";
        let samples = parse(text).unwrap();
        assert_eq!(
            samples,
            vec![
                sample("up", &[("job", "a")], 1.0),
                sample("up", &[("job", "b")], 0.0)
            ]
        );
        assert_eq!(samples[1].label("job"), Some("b"));
        assert_eq!(samples[1].label("instance"), None);
    }

    #[test]
    fn names_the_bad_line() {
        let err = parse("up 1\nup{ 1\n").unwrap_err();
        assert!(format!("{err:#}").starts_with("line 2:"), "{err:#}");
    }
}

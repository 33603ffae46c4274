//! Parser for the Prometheus text exposition format that sonde serves on
//! `/metrics`, and the queries the tests assert with.
//!
//! Only samples are kept (`# HELP`/`# TYPE` lines are skipped): the tests
//! compare values of series, selected by name and a subset of their labels.
use std::fmt;

/// Label names and values, in exposition order.
pub type Labels = Vec<(String, String)>;

/// One line of the exposition: a series and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Same name and every label in `subset` present with that value.
    pub fn matches(&self, name: &str, subset: &[(&str, &str)]) -> bool {
        self.name == name
            && subset
                .iter()
                .all(|(key, value)| self.label(key) == Some(*value))
    }
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        if !self.labels.is_empty() {
            let labels: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            write!(f, "{{{}}}", labels.join(","))?;
        }
        write!(f, " {}", self.value)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {reason}: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub reason: &'static str,
    pub text: String,
}

/// One scrape of `/metrics`.
#[derive(Clone, Debug)]
pub struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Result<Scrape, ParseError> {
        let mut samples = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let sample = parse_sample(line).map_err(|reason| ParseError {
                line: index + 1,
                reason,
                text: line.to_string(),
            })?;
            samples.push(sample);
        }
        Ok(Scrape {
            text: text.to_string(),
            samples,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    pub fn find<'a>(
        &'a self,
        name: &'a str,
        subset: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.matches(name, subset))
    }

    /// Value of the one series of `name` that has the labels in `subset`.
    /// `None` if there is none. Panics if several match: the query is then
    /// ambiguous and the test must name more labels.
    pub fn value(&self, name: &str, subset: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self.find(name, subset).collect();
        match matching.as_slice() {
            [] => None,
            [one] => Some(one.value),
            many => panic!(
                "{name}{subset:?} is ambiguous, it matches {} series:\n{}",
                many.len(),
                many.iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }

    /// Sum over every series of `name` that has the labels in `subset`
    /// (0 if there is none).
    pub fn sum(&self, name: &str, subset: &[(&str, &str)]) -> f64 {
        // Folded from +0.0: `Sum for f64` starts at -0.0, which prints as "-0".
        self.find(name, subset)
            .fold(0.0, |total, s| total + s.value)
    }

    /// Cumulative count of histogram `family` in the bucket with upper bound
    /// `le`, compared numerically so `1`, `1.0` and `1e0` are the same bucket.
    pub fn bucket(&self, family: &str, subset: &[(&str, &str)], le: f64) -> Option<f64> {
        let name = format!("{family}_bucket");
        let matching: Vec<&Sample> = self
            .find(&name, subset)
            .filter(|s| s.label("le").and_then(parse_value) == Some(le))
            .collect();
        match matching.as_slice() {
            [] => None,
            [one] => Some(one.value),
            many => panic!(
                "{name}{subset:?} le={le} is ambiguous, it matches {} series",
                many.len()
            ),
        }
    }

    /// The exposition lines of metrics whose name starts with one of
    /// `prefixes`, to show in assertion messages instead of the whole scrape.
    pub fn excerpt(&self, prefixes: &[&str]) -> String {
        self.text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter(|line| prefixes.iter().any(|p| line.starts_with(p)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn parse_sample(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("empty metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after_labels) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after_labels;
    }
    // An optional timestamp may follow the value.
    let value = rest.split_ascii_whitespace().next().ok_or("no value")?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value: parse_value(value).ok_or("bad value")?,
    })
}

/// Parses `k="v",...}` and returns the labels and what follows the `}`.
fn parse_labels(mut rest: &str) -> Result<(Labels, &str), &'static str> {
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let key = rest[..eq].trim();
        if key.is_empty() {
            return Err("empty label name");
        }
        rest = rest[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let close = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("unterminated escape")?.1 {
                    'n' => value.push('\n'),
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    _ => return Err("unknown escape in label value"),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.to_string(), value));
        rest = rest[close + 1..].trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("expected ',' or '}' after label");
        }
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Subset = &'static [(&'static str, &'static str)];

    fn owned(labels: &[(&str, &str)]) -> Labels {
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_sample_lines() {
        let cases: &[(&str, &str, Subset, f64)] = &[
            ("up 1", "up", &[], 1.0),
            ("up   0.5 1700000000000", "up", &[], 0.5),
            (r#"a{b="c"} 2"#, "a", &[("b", "c")], 2.0),
            (r#"a{b="c",d="e",} 3"#, "a", &[("b", "c"), ("d", "e")], 3.0),
            (
                r#"a{ b = "c" , d="" } 4"#,
                "a",
                &[("b", "c"), ("d", "")],
                4.0,
            ),
            (r#"a{b="x\"y"} 5"#, "a", &[("b", "x\"y")], 5.0),
            (r#"a{b="x\\y"} 6"#, "a", &[("b", "x\\y")], 6.0),
            (r#"a{b="x\ny"} 7"#, "a", &[("b", "x\ny")], 7.0),
            (r#"a{b="{},= "} 8"#, "a", &[("b", "{},= ")], 8.0),
            (
                r#"h_bucket{le="+Inf"} 9"#,
                "h_bucket",
                &[("le", "+Inf")],
                9.0,
            ),
            ("big 1.5e3", "big", &[], 1500.0),
            ("inf +Inf", "inf", &[], f64::INFINITY),
            ("neg -Inf", "neg", &[], f64::NEG_INFINITY),
        ];
        for (line, name, labels, value) in cases {
            let scrape = Scrape::parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            let expected = Sample {
                name: name.to_string(),
                labels: owned(labels),
                value: *value,
            };
            assert_eq!(scrape.samples(), &[expected], "{line}");
        }
    }

    #[test]
    fn nan_value() {
        let scrape = Scrape::parse("x NaN").unwrap();
        assert!(scrape.samples()[0].value.is_nan());
    }

    #[test]
    fn rejects_malformed_lines() {
        let cases: &[(&str, &str)] = &[
            ("lonely", "no value"),
            ("x{a=\"1\"}", "no value"),
            ("x abc", "bad value"),
            ("x{a=1} 1", "label value not quoted"),
            ("x{a=\"1} 1", "unterminated label value"),
            ("x{a=\"1\" b=\"2\"} 1", "expected ',' or '}' after label"),
            ("x{a=\"\\t\"} 1", "unknown escape in label value"),
            ("x{a} 1", "label without '='"),
            ("x{=\"1\"} 1", "empty label name"),
            ("{a=\"1\"} 1", "empty metric name"),
        ];
        for (line, reason) in cases {
            let error = Scrape::parse(&format!("ok 1\n{line}\n")).unwrap_err();
            assert_eq!(
                error,
                ParseError {
                    line: 2,
                    reason,
                    text: line.to_string()
                },
                "{line}"
            );
        }
    }

    const EXPOSITION: &str = r#"# HELP req Requests.
# TYPE req histogram
req_bucket{svc="a",route="/x",status="200",le="0.5"} 1
req_bucket{svc="a",route="/x",status="200",le="1"} 3
req_bucket{svc="a",route="/x",status="200",le="+Inf"} 3
req_count{svc="a",route="/x",status="200"} 3
req_count{svc="a",route="/x",status="500"} 2
req_count{svc="b",route="/y",status="200"} 7

lost_total 0
"#;

    #[test]
    fn value_selects_by_label_subset() {
        let scrape = Scrape::parse(EXPOSITION).unwrap();
        let cases: &[(&str, Subset, Option<f64>)] = &[
            ("req_count", &[("svc", "a"), ("status", "200")], Some(3.0)),
            ("req_count", &[("svc", "a"), ("status", "500")], Some(2.0)),
            ("req_count", &[("svc", "b")], Some(7.0)),
            ("req_count", &[("svc", "c")], None),
            ("req_count", &[("nolabel", "a")], None),
            ("lost_total", &[], Some(0.0)),
            ("missing", &[], None),
        ];
        for (name, labels, expected) in cases {
            assert_eq!(scrape.value(name, labels), *expected, "{name}{labels:?}");
        }
    }

    #[test]
    #[should_panic(expected = "ambiguous")]
    fn value_refuses_ambiguous_query() {
        Scrape::parse(EXPOSITION)
            .unwrap()
            .value("req_count", &[("svc", "a")]);
    }

    #[test]
    fn sum_adds_matching_series() {
        let scrape = Scrape::parse(EXPOSITION).unwrap();
        assert_eq!(scrape.sum("req_count", &[("svc", "a")]), 5.0);
        assert_eq!(scrape.sum("req_count", &[]), 12.0);
        let none = scrape.sum("req_count", &[("svc", "c")]);
        assert_eq!(none.to_string(), "0");
    }

    #[test]
    fn bucket_compares_bounds_numerically() {
        let scrape = Scrape::parse(EXPOSITION).unwrap();
        let svc = [("svc", "a"), ("status", "200")];
        assert_eq!(scrape.bucket("req", &svc, 0.5), Some(1.0));
        assert_eq!(scrape.bucket("req", &svc, 1.0), Some(3.0));
        assert_eq!(scrape.bucket("req", &svc, f64::INFINITY), Some(3.0));
        assert_eq!(scrape.bucket("req", &svc, 0.25), None);
    }

    #[test]
    fn excerpt_keeps_named_metrics_only() {
        let scrape = Scrape::parse(EXPOSITION).unwrap();
        assert_eq!(
            scrape.excerpt(&["lost", "req_count{svc=\"b\""]),
            "req_count{svc=\"b\",route=\"/y\",status=\"200\"} 7\nlost_total 0"
        );
    }
}

//! The config file (`--config sonde.yaml`): a YAML mapping from setting
//! names to values, read into [`Entry`]s that `settings` layers under the
//! environment and the command line. Only the YAML and its shape are read
//! here; what a key and a value mean is decided in `settings`, by the flag
//! the key names.
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

/// A place in the file, 1-based as editors count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

impl Position {
    fn of(location: Location) -> Option<Position> {
        (location != Location::UNKNOWN).then(|| Position {
            line: location.line(),
            column: location.column(),
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One `key: value` of the file, in the order written.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_at: Option<Position>,
    pub value: Value,
    pub value_at: Option<Position>,
}

/// A value as written, before the parser of its flag reads it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `~`, `null` or nothing after the colon: not set in this file.
    Null,
    /// A string, number or boolean, as the text a flag would be given.
    Scalar(String),
    List(Vec<Item>),
    Mapping,
}

/// An element of a [`Value::List`].
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub value: Value,
    pub at: Option<Position>,
}

/// The file is not YAML, or not a mapping.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{}{message}", at.map(|at| format!("{at}: ")).unwrap_or_default())]
pub struct SyntaxError {
    pub at: Option<Position>,
    /// One line, without the position.
    pub message: String,
}

/// Reads the entries of a config file's text. An empty file (or one with
/// only comments) has none.
pub fn parse(text: &str) -> Result<Vec<Entry>, SyntaxError> {
    let options = serde_saphyr::options! {
        with_snippet: false,
        // YAML 1.2 booleans only: `yes` and `on` are strings, not true.
        strict_booleans: true,
        // Repeated keys reach the visitor, to be reported with both places.
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
        // `.nan` and `.inf` reach the flag's parser, which names the key.
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::AsString,
    };
    let entries = match serde_saphyr::from_str_with_options::<Option<Document>>(text, options) {
        Ok(document) => document.map(|d| d.0).unwrap_or_default(),
        Err(e) => {
            let at = e.location().and_then(Position::of);
            return Err(SyntaxError {
                at,
                message: without_position(&e.without_snippet().to_string(), at),
            });
        }
    };
    for (i, entry) in entries.iter().enumerate() {
        if let Some(first) = entries[..i].iter().find(|e| e.key == entry.key) {
            return Err(SyntaxError {
                at: entry.key_at,
                message: match first.key_at {
                    Some(at) => format!("`{}` is set twice, first at {at}", entry.key),
                    None => format!("`{}` is set twice", entry.key),
                },
            });
        }
    }
    Ok(entries)
}

/// The library's message on one line, without the position it appends (the
/// caller puts the position first, as compilers do).
fn without_position(message: &str, at: Option<Position>) -> String {
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    match at {
        Some(at) => {
            let suffix = format!(" at line {}, column {}", at.line, at.column);
            message.strip_suffix(&suffix).unwrap_or(&message).to_owned()
        }
        None => message,
    }
}

struct Document(Vec<Entry>);

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(DocumentVisitor)
    }
}

struct DocumentVisitor;

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = Document;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping of setting names to values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Document, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let value = map.next_value::<Spanned<Value>>()?;
            entries.push(Entry {
                key: key.value,
                key_at: Position::of(key.referenced),
                value: value.value,
                value_at: Position::of(value.referenced),
            });
        }
        Ok(Document(entries))
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value or a list of values")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Scalar(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Scalar(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Scalar(v.to_string()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Scalar(v.to_string()))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(Value::Scalar(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // `{:?}` keeps a float a float (`4096.0`, not `4096`), so an integer
        // setting refuses it as its flag would.
        Ok(Value::Scalar(format!("{v:?}")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Scalar(v.to_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Value>>()? {
            items.push(Item {
                value: item.value,
                at: Position::of(item.referenced),
            });
        }
        Ok(Value::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        // What is wrong is said with the key's name, in `settings`.
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Value::Mapping)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: u64, column: u64) -> Option<Position> {
        Some(Position { line, column })
    }

    fn scalar(text: &str) -> Value {
        Value::Scalar(text.to_owned())
    }

    /// Each document with a single key `k`: its value and where it starts.
    #[test]
    fn values_as_written() {
        for (text, value, value_at) in [
            ("k: 8080\n", scalar("8080"), at(1, 4)),
            ("k: -1\n", scalar("-1"), at(1, 4)),
            ("k: 0.25\n", scalar("0.25"), at(1, 4)),
            // A float stays a float, for an integer setting to refuse it.
            ("k: 4096.0\n", scalar("4096.0"), at(1, 4)),
            ("k: 1e3\n", scalar("1000.0"), at(1, 4)),
            ("k: .nan\n", scalar(".nan"), at(1, 4)),
            ("k: true\n", scalar("true"), at(1, 4)),
            // YAML 1.2: not a boolean, so a boolean setting refuses it.
            ("k: yes\n", scalar("yes"), at(1, 4)),
            ("k: \"0.0.0.0:9464\"\n", scalar("0.0.0.0:9464"), at(1, 4)),
            ("k: 'null'\n", scalar("null"), at(1, 4)),
            ("k: http/protobuf\n", scalar("http/protobuf"), at(1, 4)),
            ("k: ~\n", Value::Null, at(1, 4)),
            ("k: null\n", Value::Null, at(1, 4)),
            ("k:\n", Value::Null, at(1, 2)),
            ("k: {a: 1, b: [2]}\n", Value::Mapping, at(1, 4)),
            ("k: []\n", Value::List(vec![]), at(1, 4)),
            (
                "k: [80, '90']\n",
                Value::List(vec![
                    Item {
                        value: scalar("80"),
                        at: at(1, 5),
                    },
                    Item {
                        value: scalar("90"),
                        at: at(1, 9),
                    },
                ]),
                at(1, 4),
            ),
            (
                "k:\n  - 1\n  - [2]\n",
                Value::List(vec![
                    Item {
                        value: scalar("1"),
                        at: at(2, 5),
                    },
                    Item {
                        value: Value::List(vec![Item {
                            value: scalar("2"),
                            at: at(3, 6),
                        }]),
                        at: at(3, 5),
                    },
                ]),
                at(2, 3),
            ),
        ] {
            let expected = vec![Entry {
                key: "k".to_owned(),
                key_at: at(1, 1),
                value,
                value_at,
            }];
            assert_eq!(parse(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn entries_in_order_and_empty_documents() {
        let keys = |text| parse(text).map(|e| e.into_iter().map(|e| e.key).collect::<Vec<_>>());
        assert_eq!(
            keys("b: 1\n# a: 2\na: 3\n"),
            Ok(vec!["b".into(), "a".into()])
        );
        for empty in ["", "\n", "# only comments\n# here\n", "---\n", "~\n"] {
            assert_eq!(parse(empty), Ok(vec![]), "{empty:?}");
        }
    }

    #[test]
    fn what_is_not_a_mapping_of_settings() {
        for (text, error_at, message) in [
            ("port: [1\n", at(1, 7), "unclosed bracket '['"),
            (
                "a: b: c\n",
                at(1, 5),
                "mapping values are not allowed in this context",
            ),
            ("- a\n- b\n", at(1, 1), "expected mapping start"),
            ("just text\n", at(1, 1), "expected mapping start"),
            (
                "port: 1\nlog-level: info\nport: 2\n",
                at(3, 1),
                "`port` is set twice, first at 1:1",
            ),
            (
                "k: \"open\n",
                at(2, 1),
                "invalid indentation in multiline quoted scalar",
            ),
        ] {
            let expected = SyntaxError {
                at: error_at,
                message: message.to_owned(),
            };
            assert_eq!(parse(text), Err(expected), "{text:?}");
        }
    }
}

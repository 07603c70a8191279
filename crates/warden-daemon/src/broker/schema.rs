//! Checks a proposal's arguments against a tool's schema, and renders the
//! argv from the template.
//!
//! There is no shell anywhere: each template element becomes exactly one argv
//! element, so `; rm -rf /`, `$(...)` or a newline in a value is only ever a
//! literal string handed to the program. What the schema still guards against
//! is what a program does with a literal: option injection (a leading `-`),
//! paths outside their prefix (`..`), NUL (which would cut a C string short).

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde_json::Value;

use super::registry::{ParamSpec, ParamType, Piece, Tool};

/// Why arguments do not match a tool's schema. The message is what the agent
/// and the operator see; it names the argument and what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("unknown argument {name:?}: {tool} takes {known}")]
    Unknown {
        tool: String,
        name: String,
        known: String,
    },
    #[error("missing required argument {0:?}")]
    Missing(String),
    #[error("argument {name:?} must be {want}, got {got}")]
    WrongType {
        name: String,
        want: &'static str,
        got: &'static str,
    },
    #[error("argument {name:?}: {value:?} is not one of the allowed values {allowed:?}")]
    NotAllowed {
        name: String,
        value: String,
        allowed: Vec<String>,
    },
    #[error("argument {name:?} is {len} bytes long, at most {max} allowed")]
    TooLong {
        name: String,
        len: usize,
        max: usize,
    },
    #[error("argument {name:?}: {value} is out of range {min}..={max}")]
    OutOfRange {
        name: String,
        value: i64,
        min: i64,
        max: i64,
    },
    #[error("argument {name:?} contains a {what}, which is not allowed")]
    BadChar { name: String, what: &'static str },
    #[error("argument {name:?} starts with '-' and would be read as an option")]
    LeadingDash { name: String },
    #[error("argument {name:?}: path {path:?} contains a .. component")]
    ParentDir { name: String, path: String },
    #[error("argument {name:?}: path {path:?} is outside {prefix}")]
    OutsidePrefix {
        name: String,
        path: String,
        prefix: String,
    },
    #[error("argument {name:?}: path is empty")]
    EmptyPath { name: String },
}

/// Arguments that passed the schema, rendered to the strings that go into argv.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidArgs(pub BTreeMap<String, String>);

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks every argument against `tool`'s schema: no unknown argument, every
/// required one present, each of its type and within its constraints.
pub fn validate_args(
    tool: &Tool,
    args: &BTreeMap<String, Value>,
) -> Result<ValidArgs, SchemaError> {
    for name in args.keys() {
        if !tool.params.contains_key(name) {
            let known: Vec<&str> = tool.params.keys().map(String::as_str).collect();
            return Err(SchemaError::Unknown {
                tool: tool.name.clone(),
                name: name.clone(),
                known: if known.is_empty() {
                    "no arguments".into()
                } else {
                    known.join(", ")
                },
            });
        }
    }
    let mut out = BTreeMap::new();
    for (name, spec) in &tool.params {
        match args.get(name) {
            None | Some(Value::Null) if spec.required => {
                return Err(SchemaError::Missing(name.clone()))
            }
            None | Some(Value::Null) => {}
            Some(v) => {
                out.insert(name.clone(), check_one(name, spec, v)?);
            }
        }
    }
    Ok(ValidArgs(out))
}

fn check_one(name: &str, spec: &ParamSpec, v: &Value) -> Result<String, SchemaError> {
    let wrong = |want| SchemaError::WrongType {
        name: name.into(),
        want,
        got: json_kind(v),
    };
    match spec.ty {
        ParamType::Boolean => v
            .as_bool()
            .map(|b| b.to_string())
            .ok_or_else(|| wrong("a boolean")),
        ParamType::Integer => {
            let n = v.as_i64().ok_or_else(|| wrong("an integer"))?;
            let (min, max) = (spec.min.unwrap_or(i64::MIN), spec.max.unwrap_or(i64::MAX));
            if n < min || n > max {
                return Err(SchemaError::OutOfRange {
                    name: name.into(),
                    value: n,
                    min,
                    max,
                });
            }
            Ok(n.to_string())
        }
        ParamType::String | ParamType::Path => {
            let want = if spec.ty == ParamType::Path {
                "a path string"
            } else {
                "a string"
            };
            let s = v.as_str().ok_or_else(|| wrong(want))?;
            check_text(name, spec, s)?;
            Ok(s.to_string())
        }
    }
}

fn check_text(name: &str, spec: &ParamSpec, s: &str) -> Result<(), SchemaError> {
    let bad = |what| SchemaError::BadChar {
        name: name.into(),
        what,
    };
    // argv elements are C strings: a NUL would silently cut the value short.
    if s.contains('\0') {
        return Err(bad("NUL byte"));
    }
    if let Some(max) = spec.max_len {
        if s.len() > max {
            return Err(SchemaError::TooLong {
                name: name.into(),
                len: s.len(),
                max,
            });
        }
    }
    if let Some(allowed) = &spec.allowed {
        if !allowed.iter().any(|a| a == s) {
            return Err(SchemaError::NotAllowed {
                name: name.into(),
                value: s.into(),
                allowed: allowed.clone(),
            });
        }
    }
    if s.starts_with('-') && !spec.allow_leading_dash {
        return Err(SchemaError::LeadingDash { name: name.into() });
    }
    if spec.ty == ParamType::Path {
        if s.is_empty() {
            return Err(SchemaError::EmptyPath { name: name.into() });
        }
        // A file name with a newline or escape forges log lines and listings.
        if s.chars().any(char::is_control) {
            return Err(bad("control character"));
        }
        let p = Path::new(s);
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(SchemaError::ParentDir {
                name: name.into(),
                path: s.into(),
            });
        }
        if let Some(prefix) = &spec.prefix {
            // Component-wise: /srv/data does not contain /srv/database.
            if !p.starts_with(prefix) {
                return Err(SchemaError::OutsidePrefix {
                    name: name.into(),
                    path: s.into(),
                    prefix: prefix.display().to_string(),
                });
            }
        }
    }
    Ok(())
}

/// The argv of one call: the program, then each template element with its
/// placeholders replaced. An element that mentions an absent optional
/// argument is left out whole (so `--limit={n}` disappears with `n`).
pub fn render_argv(tool: &Tool, args: &ValidArgs) -> Vec<String> {
    let mut argv = Vec::with_capacity(tool.template.len() + 1);
    argv.push(tool.program.to_string_lossy().into_owned());
    'elements: for pieces in &tool.template {
        let mut el = String::new();
        for p in pieces {
            match p {
                Piece::Literal(l) => el.push_str(l),
                Piece::Param(n) => match args.0.get(n) {
                    Some(v) => el.push_str(v),
                    None => continue 'elements,
                },
            }
        }
        argv.push(el);
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::registry::Registry;
    use serde_json::json;

    const TOOLS: &str = r#"
[[tool]]
name = "t"
scope = "read"
program = "/bin/t"
args = ["--", "{s}", "{p}", "--n={n}", "{b}", "{mode}"]
timeout = "1s"
output_cap = 100
[tool.params.s]
type = "string"
max_len = 40
[tool.params.p]
type = "path"
prefix = "/srv/data"
[tool.params.n]
type = "integer"
min = 1
max = 10
required = false
[tool.params.b]
type = "boolean"
required = false
[tool.params.mode]
type = "string"
allowed = ["fast", "slow"]
required = false
"#;

    fn tool() -> Tool {
        Registry::parse(TOOLS, Path::new("t.toml"))
            .unwrap()
            .get("t")
            .unwrap()
            .clone()
    }

    fn args(v: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    fn check(v: Value) -> Result<Vec<String>, SchemaError> {
        let t = tool();
        validate_args(&t, &args(v)).map(|a| render_argv(&t, &a))
    }

    #[test]
    fn renders_and_drops_absent_optionals() {
        assert_eq!(
            check(json!({"s": "x", "p": "/srv/data/a"})).unwrap(),
            ["/bin/t", "--", "x", "/srv/data/a"]
        );
        assert_eq!(
            check(json!({"s": "x", "p": "/srv/data", "n": 3, "b": false, "mode": "fast"})).unwrap(),
            ["/bin/t", "--", "x", "/srv/data", "--n=3", "false", "fast"]
        );
    }

    #[test]
    fn injection_stays_one_literal_element() {
        for evil in [
            "; rm -rf /",
            "$(reboot)",
            "`id`",
            "a\nb",
            "x && y | z > /etc/passwd",
            "*",
        ] {
            let argv = check(json!({"s": evil, "p": "/srv/data/f"})).unwrap();
            assert_eq!(argv.len(), 4, "{evil:?}");
            assert_eq!(argv[2], evil);
        }
    }

    #[test]
    fn each_schema_violation_is_refused() {
        let ok = json!({"s": "x", "p": "/srv/data/f"});
        assert!(check(ok).is_ok());
        let cases = [
            (
                json!({"s": "x", "p": "/srv/data/f", "q": 1}),
                "unknown argument \"q\"",
            ),
            (
                json!({"p": "/srv/data/f"}),
                "missing required argument \"s\"",
            ),
            (
                json!({"s": 5, "p": "/srv/data/f"}),
                "must be a string, got integer",
            ),
            (
                json!({"s": "x", "p": "/srv/data/f", "n": "3"}),
                "must be an integer, got string",
            ),
            (
                json!({"s": "x", "p": "/srv/data/f", "n": 2.5}),
                "got number",
            ),
            (
                json!({"s": "x", "p": "/srv/data/f", "b": "true"}),
                "must be a boolean",
            ),
            (
                json!({"s": "x", "p": "/srv/data/f", "mode": "rm"}),
                "not one of the allowed",
            ),
            (
                json!({"s": "x".repeat(41), "p": "/srv/data/f"}),
                "41 bytes long, at most 40",
            ),
            (
                json!({"s": "x", "p": "/srv/data/f", "n": 11}),
                "out of range 1..=10",
            ),
            (
                json!({"s": "x", "p": "/srv/data/f", "n": 0}),
                "out of range",
            ),
            (
                json!({"s": "x", "p": "/srv/data/../../etc/passwd"}),
                "contains a .. component",
            ),
            (json!({"s": "x", "p": "../etc"}), ".. component"),
            (
                json!({"s": "x", "p": "/srv/database/f"}),
                "outside /srv/data",
            ),
            (json!({"s": "x", "p": "srv/data/f"}), "outside /srv/data"),
            (
                json!({"s": "x", "p": "/srv/data/a\nb"}),
                "control character",
            ),
            (json!({"s": "x", "p": ""}), "path is empty"),
            (json!({"s": "a\0b", "p": "/srv/data/f"}), "NUL byte"),
            (
                json!({"s": "--output=/etc/shadow", "p": "/srv/data/f"}),
                "read as an option",
            ),
            (
                json!({"s": "x", "p": "/srv/data/f", "b": [true]}),
                "got array",
            ),
        ];
        for (v, want) in cases {
            let e = check(v.clone()).unwrap_err().to_string();
            assert!(e.contains(want), "{v}: {e}");
        }
    }

    #[test]
    fn null_means_absent() {
        assert!(check(json!({"s": "x", "p": "/srv/data/f", "n": null})).is_ok());
        assert!(check(json!({"s": null, "p": "/srv/data/f"})).is_err());
    }
}

//! The tool registry: a TOML file of `[[tool]]` tables, parsed strictly.
//!
//! ```toml
//! [[tool]]
//! name = "grep"
//! scope = "read"
//! program = "/usr/bin/grep"
//! args = ["-n", "--", "{pattern}", "{file}"]
//! timeout = "10s"
//! output_cap = "1M"
//! [tool.params.pattern]
//! type = "string"
//! max_len = 200
//! [tool.params.file]
//! type = "path"
//! prefix = "/srv/data"
//! ```
//!
//! Unknown keys, bad values, duplicate tool names, a placeholder without a
//! param and a param no placeholder uses are errors that name the key and
//! its line.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use warden_core::config::{Bytes, Dur};

/// The most output (each of stdout and stderr) a tool may return.
pub const MAX_OUTPUT_CAP: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: line {line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// What a tool may do, and so what a call needs before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Runs at once.
    Read,
    /// Needs an approval token bound to agent and tool.
    Write,
    /// Needs an approval token bound to agent, tool and the exact arguments.
    Execute,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Execute => "execute",
        }
    }
}

/// The JSON type an argument must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    /// A JSON integer (i64); rendered in decimal.
    Integer,
    /// A JSON boolean; rendered `true` / `false`.
    Boolean,
    /// A JSON string naming a file: no NUL, no control character, no `..`
    /// component, inside `prefix` when one is set.
    Path,
}

/// The schema of one argument (`[tool.params.NAME]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamSpec {
    #[serde(rename = "type")]
    pub ty: ParamType,
    /// The only values accepted (string and path).
    pub allowed: Option<Vec<String>>,
    /// Longest value in bytes (string and path).
    pub max_len: Option<usize>,
    /// Smallest accepted integer.
    pub min: Option<i64>,
    /// Largest accepted integer.
    pub max: Option<i64>,
    /// Absolute directory a path must lie in, compared component by component
    /// (lexically: symlinks are the filesystem's business, and the tool runs
    /// as the agent's user, whose permissions are the last boundary).
    pub prefix: Option<PathBuf>,
    /// A value starting with `-` is refused unless this is set: a program
    /// would read it as an option (`--output=/etc/passwd`) even though it is
    /// a single argv element.
    pub allow_leading_dash: bool,
    /// A missing required argument is an error; a missing optional one drops
    /// every template element that mentions it.
    pub required: bool,
}

/// One piece of an argv template element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Literal(String),
    Param(String),
}

/// A registered tool.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub scope: Scope,
    /// Absolute path of the program; argv[0].
    pub program: PathBuf,
    /// The template as written, for display.
    pub args: Vec<String>,
    /// The template parsed: one entry per argv element.
    pub template: Vec<Vec<Piece>>,
    pub params: BTreeMap<String, ParamSpec>,
    /// The daemon kills the tool's process after this long.
    pub timeout: Duration,
    /// Bytes of output kept; the rest is dropped and the result marked truncated.
    pub output_cap: u64,
}

/// Every registered tool, by name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    tools: HashMap<String, Tool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default, rename = "tool")]
    tools: Vec<RawTool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTool {
    name: Spanned<String>,
    scope: Scope,
    program: Spanned<String>,
    #[serde(default = "no_args")]
    args: Spanned<Vec<String>>,
    #[serde(default)]
    params: BTreeMap<String, RawParam>,
    timeout: Spanned<Dur>,
    output_cap: Spanned<Bytes>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    #[serde(rename = "type")]
    ty: Spanned<ParamType>,
    allowed: Option<Vec<String>>,
    max_len: Option<usize>,
    min: Option<i64>,
    max: Option<i64>,
    prefix: Option<PathBuf>,
    #[serde(default)]
    allow_leading_dash: bool,
    #[serde(default = "yes")]
    required: bool,
}

fn no_args() -> Spanned<Vec<String>> {
    Spanned::new(0..0, Vec::new())
}

fn yes() -> bool {
    true
}

/// `[a-z0-9_.-]{1,64}`: tool names appear in logs, tokens and policy lists.
fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

fn valid_param_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Splits a template element into literals and `{name}` placeholders;
/// `{{` and `}}` are literal braces.
pub fn parse_template(element: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut chars = element.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                lit.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("unclosed placeholder in {element:?}")),
                    }
                }
                if !valid_param_name(&name) {
                    return Err(format!(
                        "placeholder {{{name}}} in {element:?} is not a parameter name ([A-Za-z0-9_]+)"
                    ));
                }
                if !lit.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut lit)));
                }
                pieces.push(Piece::Param(name));
            }
            '}' => {
                return Err(format!(
                    "unmatched }} in {element:?} (write }}}} for a literal)"
                ))
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Literal(lit));
    }
    Ok(pieces)
}

impl Registry {
    /// Parses and validates registry text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Registry, RegistryError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| RegistryError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        let mut tools = HashMap::new();
        for rt in raw.tools {
            let tool = build_tool(rt, text, path)?;
            if tools.contains_key(&tool.0.name) {
                return Err(RegistryError::Invalid {
                    path: path.to_owned(),
                    line: tool.1,
                    message: format!("duplicate tool name {:?}", tool.0.name),
                });
            }
            tools.insert(tool.0.name.clone(), tool.0);
        }
        Ok(Registry { tools })
    }

    pub fn get(&self, name: &str) -> Option<&Tool> {
        self.tools.get(name)
    }

    /// Tool names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut n: Vec<&str> = self.tools.keys().map(String::as_str).collect();
        n.sort_unstable();
        n
    }

    pub fn len(&self) -> usize {
        self.tools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Validates one raw tool; returns it with the line of its name.
fn build_tool(rt: RawTool, text: &str, path: &Path) -> Result<(Tool, usize), RegistryError> {
    let name = rt.name.get_ref().clone();
    let name_line = line_of(text, rt.name.span().start);
    let at = |span: std::ops::Range<usize>, message: String| RegistryError::Invalid {
        path: path.to_owned(),
        line: line_of(text, span.start),
        message: format!("tool {name}: {message}"),
    };
    if !valid_tool_name(&name) {
        return Err(at(
            rt.name.span(),
            "name: use 1 to 64 characters from [a-z0-9_.-]".into(),
        ));
    }
    let program = rt.program.get_ref();
    if !program.starts_with('/') || program.contains('\0') {
        return Err(at(
            rt.program.span(),
            format!("program must be an absolute path, got {program:?}"),
        ));
    }
    if rt.timeout.get_ref().0.is_zero() {
        return Err(at(
            rt.timeout.span(),
            "timeout must be longer than 0s".into(),
        ));
    }
    let output_cap = rt.output_cap.get_ref().0;
    if output_cap > MAX_OUTPUT_CAP {
        return Err(at(
            rt.output_cap.span(),
            format!(
                "output_cap {output_cap} is over the most a tool may return ({MAX_OUTPUT_CAP} bytes, 4M): the output travels back in one message"
            ),
        ));
    }
    let mut template = Vec::new();
    let mut used = HashSet::new();
    for el in rt.args.get_ref() {
        if el.contains('\0') {
            return Err(at(
                rt.args.span(),
                format!("args: {el:?} contains a NUL byte"),
            ));
        }
        let pieces = parse_template(el).map_err(|m| at(rt.args.span(), format!("args: {m}")))?;
        for p in &pieces {
            if let Piece::Param(n) = p {
                if !rt.params.contains_key(n) {
                    return Err(at(
                        rt.args.span(),
                        format!("args: placeholder {{{n}}} has no [tool.params.{n}]"),
                    ));
                }
                used.insert(n.clone());
            }
        }
        template.push(pieces);
    }
    let mut params = BTreeMap::new();
    for (pname, rp) in rt.params {
        let pat = |message: String| at(rp.ty.span(), format!("params.{pname}: {message}"));
        if !valid_param_name(&pname) {
            return Err(pat("parameter names use [A-Za-z0-9_]".into()));
        }
        if !used.contains(&pname) {
            return Err(pat("no placeholder in args uses this parameter".into()));
        }
        let ty = *rp.ty.get_ref();
        let textual = matches!(ty, ParamType::String | ParamType::Path);
        if !textual && (rp.allowed.is_some() || rp.max_len.is_some()) {
            return Err(pat(
                "allowed and max_len apply to string and path parameters only".into(),
            ));
        }
        if ty != ParamType::Integer && (rp.min.is_some() || rp.max.is_some()) {
            return Err(pat("min and max apply to integer parameters only".into()));
        }
        if let (Some(lo), Some(hi)) = (rp.min, rp.max) {
            if lo > hi {
                return Err(pat(format!("min {lo} is greater than max {hi}")));
            }
        }
        if ty != ParamType::Path && rp.prefix.is_some() {
            return Err(pat("prefix applies to path parameters only".into()));
        }
        if let Some(p) = &rp.prefix {
            if !p.is_absolute()
                || p.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(pat(format!(
                    "prefix must be an absolute path without .., got {}",
                    p.display()
                )));
            }
        }
        if rp.allowed.as_ref().is_some_and(|a| a.is_empty()) {
            return Err(pat("allowed is empty: no value could pass".into()));
        }
        if rp.max_len == Some(0) {
            return Err(pat("max_len must be at least 1".into()));
        }
        params.insert(
            pname,
            ParamSpec {
                ty,
                allowed: rp.allowed,
                max_len: rp.max_len,
                min: rp.min,
                max: rp.max,
                prefix: rp.prefix,
                allow_leading_dash: rp.allow_leading_dash,
                required: rp.required,
            },
        );
    }
    let tool = Tool {
        name,
        scope: rt.scope,
        program: PathBuf::from(program),
        args: rt.args.into_inner(),
        template,
        params,
        timeout: rt.timeout.get_ref().0,
        output_cap,
    };
    Ok((tool, name_line))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = r#"
[[tool]]
name = "grep"
scope = "read"
program = "/usr/bin/grep"
args = ["-n", "--", "{pattern}", "{file}"]
timeout = "10s"
output_cap = "1M"
[tool.params.pattern]
type = "string"
max_len = 20
[tool.params.file]
type = "path"
prefix = "/srv/data"

[[tool]]
name = "head"
scope = "read"
program = "/usr/bin/head"
args = ["-n", "{lines}", "--", "{file}"]
timeout = "5s"
output_cap = 4096
[tool.params.lines]
type = "integer"
min = 1
max = 100
[tool.params.file]
type = "path"
prefix = "/srv/data"
"#;

    fn parse(t: &str) -> Result<Registry, RegistryError> {
        Registry::parse(t, Path::new("tools.toml"))
    }

    fn err(t: &str) -> String {
        parse(t).unwrap_err().to_string()
    }

    #[test]
    fn example_parses() {
        let r = parse(EXAMPLE).unwrap();
        assert_eq!(r.names(), ["grep", "head"]);
        let g = r.get("grep").unwrap();
        assert_eq!(g.scope, Scope::Read);
        assert_eq!(g.timeout, Duration::from_secs(10));
        assert_eq!(g.output_cap, 1 << 20);
        assert_eq!(g.params["file"].prefix, Some(PathBuf::from("/srv/data")));
        assert!(g.params["file"].required);
        assert_eq!(r.get("head").unwrap().output_cap, 4096);
    }

    #[test]
    fn template_pieces() {
        assert_eq!(
            parse_template("--n={n}x").unwrap(),
            [
                Piece::Literal("--n=".into()),
                Piece::Param("n".into()),
                Piece::Literal("x".into())
            ]
        );
        assert_eq!(
            parse_template("{{a}}").unwrap(),
            [Piece::Literal("{a}".into())]
        );
        assert_eq!(parse_template("").unwrap(), [Piece::Literal("".into())]);
        assert!(parse_template("{a").is_err());
        assert!(parse_template("a}").is_err());
        assert!(parse_template("{a b}").is_err());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let t = EXAMPLE.replace("max_len = 20", "max_len = 20\nshell = true");
        let e = err(&t);
        assert!(e.contains("shell") && e.contains("line 12"), "{e}");
        let t = EXAMPLE.replace("timeout = \"5s\"", "timeout = \"5s\"\nsudo = 1");
        let e = err(&t);
        assert!(e.contains("sudo"), "{e}");
    }

    #[test]
    fn bad_values_name_line() {
        let e = err(&EXAMPLE.replace("\"/usr/bin/grep\"", "\"grep\""));
        assert!(e.contains("line 5") && e.contains("absolute"), "{e}");
        let e = err(&EXAMPLE.replace("\"10s\"", "\"10 parsecs\""));
        assert!(e.contains("duration") && e.contains("line 7"), "{e}");
        let e = err(&EXAMPLE.replace("scope = \"read\"", "scope = \"root\""));
        assert!(e.contains("root") && e.contains("line 4"), "{e}");
        let e = err(&EXAMPLE.replace("type = \"string\"", "type = \"float\""));
        assert!(e.contains("float"), "{e}");
        let e = err(&EXAMPLE.replace("min = 1", "min = 500"));
        assert!(e.contains("params.lines") && e.contains("min 500"), "{e}");
        let e = err(&EXAMPLE.replace("prefix = \"/srv/data\"\n\n", "prefix = \"srv\"\n\n"));
        assert!(e.contains("prefix must be an absolute"), "{e}");
        let e = err(&EXAMPLE.replace("max_len = 20", "max_len = 20\nmin = 1"));
        assert!(e.contains("integer parameters only"), "{e}");
    }

    #[test]
    fn duplicate_names_and_placeholders() {
        let dup = format!(
            "{EXAMPLE}{}",
            &EXAMPLE[..EXAMPLE.find("[[tool]]\nname = \"head\"").unwrap()]
        );
        let e = err(&dup);
        assert!(
            e.contains("duplicate tool name \"grep\"") && e.contains("line 32"),
            "{e}"
        );
        let e = err(&EXAMPLE.replace("\"{pattern}\"", "\"{patern}\""));
        assert!(
            e.contains("{patern} has no [tool.params.patern]") && e.contains("line 6"),
            "{e}"
        );
        let e = err(&EXAMPLE.replace("\"--\", \"{pattern}\",", "\"--\","));
        assert!(e.contains("params.pattern: no placeholder"), "{e}");
        let e = err(&EXAMPLE.replace("name = \"grep\"", "name = \"Grep Tool\""));
        assert!(e.contains("line 3") && e.contains("name"), "{e}");
    }

    #[test]
    fn empty_registry() {
        assert!(parse("").unwrap().is_empty());
    }
}

//! The text of a run as mcp-run-python returns it, so agents written for it switch
//! without changes.
//!
//! XML (default):
//!
//! ```text
//! <status>success</status>
//! <output>
//! x=4
//! </output>
//! <return_value>
//! 4
//! </return_value>
//! ```
//!
//! or, when the code failed, `<status>run-error</status>` and `<error>` with the
//! traceback instead of `<return_value>`. JSON: `{"status", "output": [lines],
//! "return_value"}` or `{"status", "output", "error"}`. Output lines are stdout and
//! stderr in the order they were written. The return value is the JSON of the last
//! expression's value (its `repr` as a JSON string when it is not plain JSON data).

use airlock_core::{Event, Outcome, Status};
use serde_json::Value;

/// How tool results are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReturnMode {
    /// mcp-run-python's XML-ish text (its default).
    #[default]
    Xml,
    /// One JSON object.
    Json,
}

impl std::str::FromStr for ReturnMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "xml" => Ok(ReturnMode::Xml),
            "json" => Ok(ReturnMode::Json),
            other => Err(format!("unknown return mode '{other}': use xml or json")),
        }
    }
}

/// stdout and stderr of a run, in order, split into lines (without their newlines).
pub fn output_lines(events: &[Event]) -> Vec<String> {
    let mut text = String::new();
    for e in events {
        match e {
            Event::Stdout { text: t } | Event::Stderr { text: t } => text.push_str(t),
            _ => {}
        }
    }
    if text.is_empty() {
        return Vec::new();
    }
    let text = text.strip_suffix('\n').unwrap_or(&text);
    text.split('\n').map(str::to_string).collect()
}

/// The last expression's value as JSON, if the cell had one.
pub fn return_value(o: &Outcome) -> Option<Value> {
    let main = o.main_result()?;
    if let Some(v) = main.data.get("application/json") {
        return Some(v.clone());
    }
    main.text().map(|t| Value::String(t.to_string()))
}

/// The error text: the traceback, with airlock's reason first when the run was
/// stopped rather than failing on its own.
pub fn error_text(o: &Outcome) -> String {
    let tb = o.error.as_ref().map(|e| e.traceback.trim_end().to_string()).filter(|t| !t.is_empty());
    let reason = o.reason.clone().unwrap_or_else(|| o.status.to_string());
    match (o.status, tb) {
        (Status::Error, Some(tb)) => tb,
        (_, Some(tb)) => format!("{}: {reason}\n{tb}", o.status),
        (_, None) => format!("{}: {reason}", o.status),
    }
}

/// Escapes opening or closing `tag` markup inside a section, as mcp-run-python does,
/// so printed text cannot end the section early.
fn escape_tag(text: &str, tag: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let rest = &lower[i..];
        if let Some(inner) = rest.strip_prefix('<') {
            let after = inner.strip_prefix('/').unwrap_or(inner).trim_start();
            if after.starts_with(tag) {
                // Escape up to and including the next '>' (if it closes this markup).
                let end = rest.find('>').map(|e| i + e + 1).unwrap_or(i + 1);
                out.push_str(&text[i..end].replace('<', "&lt;").replace('>', "&gt;"));
                i = end;
                continue;
            }
        }
        let ch = text[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Compact JSON of a value.
fn j<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// Renders a run for a tool result.
pub fn render(mode: ReturnMode, o: &Outcome, events: &[Event]) -> String {
    let ok = o.status == Status::Ok;
    let status = if ok { "success" } else { "run-error" };
    let lines = output_lines(events);
    match mode {
        ReturnMode::Json => {
            // Keys in mcp-run-python's order: status, output, then return_value or error.
            if ok {
                format!(
                    "{{\"status\":{},\"output\":{},\"return_value\":{}}}",
                    j(status),
                    j(&lines),
                    j(&return_value(o).unwrap_or(Value::Null))
                )
            } else {
                format!("{{\"status\":{},\"output\":{},\"error\":{}}}", j(status), j(&lines), j(&error_text(o)))
            }
        }
        ReturnMode::Xml => {
            let mut parts = vec![format!("<status>{status}</status>")];
            if !lines.is_empty() {
                parts.push("<output>".into());
                parts.extend(lines.iter().map(|l| escape_tag(l, "output")));
                parts.push("</output>".into());
            }
            if ok {
                if let Some(v) = return_value(o) {
                    let pretty = serde_json::to_string_pretty(&v).unwrap_or_default();
                    parts.push("<return_value>".into());
                    parts.push(escape_tag(&pretty, "return_value"));
                    parts.push("</return_value>".into());
                }
            } else {
                parts.push("<error>".into());
                parts.push(escape_tag(&error_text(o), "error"));
                parts.push("</error>".into());
            }
            parts.join("\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use airlock_core::{BackendKind, ErrorInfo, Isolation, ResultBundle};

    use super::*;

    fn outcome(status: Status) -> Outcome {
        let mut o = Outcome::new("exe_1".into(), BackendKind::Process, Isolation::None);
        o.status = status;
        o
    }

    fn main_result(o: &mut Outcome, text: &str, json: Option<Value>) {
        let mut data = BTreeMap::new();
        data.insert("text/plain".into(), Value::from(text));
        if let Some(j) = json {
            data.insert("application/json".into(), j);
        }
        o.results.push(ResultBundle { data, is_main_result: true });
    }

    #[test]
    fn success_in_the_mcp_run_python_shape() {
        let mut o = outcome(Status::Ok);
        main_result(&mut o, "4", Some(Value::from(4)));
        let ev = vec![Event::Stdout { text: "x=4\n".into() }];
        assert_eq!(
            render(ReturnMode::Xml, &o, &ev),
            "<status>success</status>\n<output>\nx=4\n</output>\n<return_value>\n4\n</return_value>"
        );
        assert_eq!(render(ReturnMode::Json, &o, &ev), r#"{"status":"success","output":["x=4"],"return_value":4}"#);
    }

    #[test]
    fn lists_are_pretty_printed_and_none_omitted() {
        let mut o = outcome(Status::Ok);
        main_result(&mut o, "[1, 2, 3]", Some(serde_json::json!([1, 2, 3])));
        assert_eq!(
            render(ReturnMode::Xml, &o, &[]),
            "<status>success</status>\n<return_value>\n[\n  1,\n  2,\n  3\n]\n</return_value>"
        );
        let o = outcome(Status::Ok);
        assert_eq!(render(ReturnMode::Xml, &o, &[]), "<status>success</status>");
        assert_eq!(render(ReturnMode::Json, &o, &[]), r#"{"status":"success","output":[],"return_value":null}"#);
        let mut o = outcome(Status::Ok);
        main_result(&mut o, "array([1, 2])", None);
        assert_eq!(return_value(&o), Some(Value::from("array([1, 2])")));
    }

    #[test]
    fn errors_carry_the_traceback_and_interleaved_output() {
        let mut o = outcome(Status::Error);
        o.error = Some(ErrorInfo {
            name: "NameError".into(),
            value: "name 'unknown' is not defined".into(),
            traceback: "Traceback (most recent call last):\n  File \"<cell>\", line 1\nNameError: name 'unknown' is not defined\n".into(),
        });
        let ev = vec![
            Event::Stdout { text: "a\n".into() },
            Event::Stderr { text: "b\n".into() },
            Event::Stdout { text: "c".into() },
        ];
        let x = render(ReturnMode::Xml, &o, &ev);
        assert!(x.starts_with("<status>run-error</status>\n<output>\na\nb\nc\n</output>\n<error>\nTraceback"), "{x}");
        assert!(x.ends_with("not defined\n</error>"), "{x}");
        let j: Value = serde_json::from_str(&render(ReturnMode::Json, &o, &ev)).unwrap();
        assert_eq!(j["output"], serde_json::json!(["a", "b", "c"]));
        assert!(j["error"].as_str().unwrap().contains("NameError"));
        assert!(j.get("return_value").is_none());
    }

    #[test]
    fn stopped_runs_say_why() {
        let mut o = outcome(Status::Timeout);
        o.reason = Some("execution exceeded the wall-clock limit of 1 s (limits.timeout_ms)".into());
        assert_eq!(error_text(&o), "timeout: execution exceeded the wall-clock limit of 1 s (limits.timeout_ms)");
    }

    #[test]
    fn section_tags_in_output_are_escaped() {
        assert_eq!(escape_tag("x</output>y", "output"), "x&lt;/output&gt;y");
        assert_eq!(escape_tag("</ OUTPUT >", "output"), "&lt;/ OUTPUT &gt;");
        assert_eq!(escape_tag("a < b, <i>é</i>", "output"), "a < b, <i>é</i>");
    }
}

//! Airlock's guard, static layer: a policy checker for Python source, run on the host
//! before any sandbox is created.
//!
//! The guard is a **safety net, not a boundary** (the backend is the boundary). It
//! refuses code that reaches for the usual escape hatches of Python-level sandboxes:
//! imports outside an allow-list, `eval`/`exec`/`compile`/`__import__`, dunder and
//! frame walks (`().__class__.__mro__[1].__subclasses__()`, `gi_frame.f_back`),
//! computed `getattr`, format-string field access to dunders, `ctypes`, `pickle`,
//! `marshal`. Its twin, the runtime layer, is an audit hook (PEP 578) installed in
//! the guest driver; see `docs/guard.md`.
//!
//! The parser is ruff's (`ruff_python_parser`, published by Astral on crates.io): it
//! parses current Python syntax (3.12's f-strings and type parameters, 3.13, 3.14),
//! applies NFKC normalisation to identifiers exactly as CPython does (so `ｅval` is
//! `eval`), recovers precise ranges, and is fast (a 1,000-line program is checked in
//! a fraction of a millisecond; `airlock bench -w guard` measures it).
//!
//! Entry points:
//! * [`check`]: the findings of one piece of Python source under a policy.
//! * [`screen`]: the static check of a whole [`ExecRequest`] (language, code,
//!   global variables); `airlock_service::Registry::execute` calls it.
//! * [`screen_cell`]: the same for one cell of a session (call it per cell, before
//!   `Sandbox::execute`, and return [`Denial::outcome`] instead of running).

use std::time::{Duration, Instant};

use airlock_core::{
    BackendKind, ErrorInfo, ExecRequest, GuardFinding, GuardPolicy, GuardSettings, Isolation, Language, NetworkPolicy,
    Outcome,
};

mod check;
mod nesting;

use check::Checker;

/// The result of checking one piece of source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Every violation, in source order.
    pub findings: Vec<GuardFinding>,
    /// How long the check took (parse + walk).
    pub elapsed: Duration,
}

impl Report {
    /// True when nothing was found.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Checks Python `source` against `policy` and returns every finding, in source order.
pub fn check(source: &str, policy: &GuardPolicy) -> Vec<GuardFinding> {
    check_timed(source, policy).findings
}

/// Like [`check`], with the time it took.
pub fn check_timed(source: &str, policy: &GuardPolicy) -> Report {
    let started = Instant::now();
    // The parser grows its own stack for deep code; the walk and the syntax tree's
    // destructor recurse too, so depth is bounded first (CPython refuses such code
    // as well) and deep trees are walked and dropped on a grown stack.
    let parsed = ruff_python_parser::parse_module(source);
    let mut checker = Checker::new(source, policy);
    check_encoding(&mut checker, source);
    let depth = match &parsed {
        Ok(parsed) => {
            let n = nesting::measure(parsed.tokens());
            match n.refusal() {
                Some((offset, why)) => {
                    let text = source.get(offset..).unwrap_or("").lines().next().unwrap_or("").to_string();
                    checker.report_at(
                        "syntax",
                        offset,
                        &text,
                        format!("{why}; CPython refuses such code too: split it into smaller expressions"),
                    );
                }
                None => stacker::maybe_grow(nesting::RED_ZONE, nesting::SEGMENT, || {
                    checker.check_module(&parsed.syntax().body)
                }),
            }
            n.estimate
        }
        Err(e) => {
            let offset = e.location.start().to_usize();
            let text = source.get(offset..).unwrap_or("").lines().next().unwrap_or("").to_string();
            checker.report_at(
                "syntax",
                offset,
                &text,
                format!("the code does not parse ({}); fix the syntax error and run it again", e.error),
            );
            0
        }
    };
    let mut findings = checker.findings;
    if depth > nesting::SHALLOW {
        // Dropping a deep tree recurses once per level.
        let size = depth.saturating_mul(nesting::DROP_BYTES_PER_LEVEL).saturating_add(nesting::SEGMENT);
        stacker::grow(size, move || drop(parsed));
    } else {
        drop(parsed);
    }
    findings.sort_by_key(|f| (f.line, f.column));
    Report { findings, elapsed: started.elapsed() }
}

/// A `# -*- coding: X -*-` declaration in the first two lines naming anything but
/// UTF-8 (or ASCII). Airlock passes code to the interpreter as text, so the
/// declaration is ignored there; it is refused because a file written with it would be
/// decoded differently from what the guard checked (e.g. `utf-7` hides code in `+...-`).
fn check_encoding(checker: &mut Checker<'_>, source: &str) {
    let mut offset = 0;
    for line in source.split_inclusive('\n').take(2) {
        let trimmed = line.trim_start_matches([' ', '\t', '\x0c']);
        if let Some(comment) = trimmed.strip_prefix('#')
            && let Some(enc) = coding_of(comment)
        {
            let norm = enc.to_ascii_lowercase().replace('_', "-");
            if !matches!(norm.as_str(), "utf-8" | "utf8" | "ascii" | "us-ascii" | "utf-8-sig") {
                checker.report_at(
                    "encoding",
                    offset,
                    line.trim_end(),
                    format!(
                        "the coding declaration '{enc}' is not allowed; write the code as UTF-8 and drop the \
                         declaration"
                    ),
                );
            }
            break;
        }
        if !trimmed.trim().is_empty() && !trimmed.starts_with('#') {
            break;
        }
        offset += line.len();
    }
}

/// The encoding named by a comment matching PEP 263's `coding[:=]\s*([-\w.]+)`.
fn coding_of(comment: &str) -> Option<&str> {
    let at = comment.find("coding")?;
    let rest = &comment[at + "coding".len()..];
    let rest = rest.strip_prefix(':').or_else(|| rest.strip_prefix('='))?;
    let rest = rest.trim_start_matches([' ', '\t']);
    let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_' || c == '.')).unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// A refusal by the guard: the profile and every finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The profile that refused the code.
    pub profile: airlock_core::GuardProfile,
    /// Every violation.
    pub findings: Vec<GuardFinding>,
}

impl Denial {
    /// One sentence: how many findings, and the first few hints (without the list of
    /// allowed imports, which the findings carry).
    pub fn summary(&self) -> String {
        const SHOWN: usize = 3;
        let n = self.findings.len();
        let mut parts: Vec<String> = self
            .findings
            .iter()
            .take(SHOWN)
            .map(|f| {
                let hint = f.hint.split("; allowed imports:").next().unwrap_or(&f.hint);
                if f.line > 0 { format!("line {}: {hint}", f.line) } else { hint.to_string() }
            })
            .collect();
        if n > SHOWN {
            parts.push(format!("and {} more", n - SHOWN));
        }
        format!(
            "the guard (profile '{}') refused the code before running it ({n} finding{}): {}",
            self.profile,
            if n == 1 { "" } else { "s" },
            parts.join("; ")
        )
    }

    /// The findings as an error a model can read: name `GuardViolation`, the summary
    /// as value, one finding per line as traceback.
    pub fn error_info(&self) -> ErrorInfo {
        let mut tb =
            format!("GuardViolation: {} finding(s) under guard profile '{}'\n", self.findings.len(), self.profile);
        for f in &self.findings {
            tb.push_str(&format!("  {f}\n"));
        }
        ErrorInfo { name: "GuardViolation".into(), value: self.summary(), traceback: tb }
    }

    /// The outcome of a refused request: status `denied`, the summary as reason, the
    /// findings as `error` and as the machine-readable `guard_findings`.
    pub fn outcome(&self, id: String, backend: BackendKind, isolation: Isolation) -> Outcome {
        let mut o = Outcome::denied(id, backend, isolation, self.summary(), Some(self.error_info()));
        o.guard_findings = self.findings.clone();
        o
    }
}

/// The static check of a request: `None` when the guard is off or the code passes.
///
/// Under a guard, bash is refused (the guard checks Python only) and global variables
/// may not be dunder names.
pub fn screen(req: &ExecRequest) -> Option<Denial> {
    screen_cell(&req.guard, req.network, req.language, &req.code, &req.global_variables)
}

/// The static check of one cell (for sessions: call it before every
/// `Sandbox::execute` and return [`Denial::outcome`] instead of running when it
/// refuses). `None` when the guard is off or the code passes.
pub fn screen_cell(
    settings: &GuardSettings,
    network: NetworkPolicy,
    language: Language,
    code: &str,
    global_variables: &serde_json::Map<String, serde_json::Value>,
) -> Option<Denial> {
    let policy = settings.policy(network)?;
    let mut findings = Vec::new();
    for name in global_variables.keys() {
        if name.starts_with("__") || !is_identifier(name) {
            findings.push(GuardFinding {
                rule: "global-variable".into(),
                line: 0,
                column: 0,
                text: name.clone(),
                hint: format!("the global variable name '{name}' is not allowed; use a plain identifier"),
            });
        }
    }
    match language {
        Language::Python => findings.extend(check(code, &policy)),
        Language::Bash => findings.push(GuardFinding {
            rule: "language".into(),
            line: 1,
            column: 1,
            text: code.lines().next().unwrap_or("").chars().take(80).collect(),
            hint: format!(
                "the guard (profile '{}') checks Python only, so bash is refused; write the step in Python",
                policy.profile
            ),
        }),
    }
    (!findings.is_empty()).then_some(Denial { profile: policy.profile, findings })
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_alphabetic()) && chars.all(|c| c == '_' || c.is_alphanumeric())
}

/// A generated program of about `lines` lines of ordinary data-analysis code (for
/// benchmarks and tests): functions, classes, comprehensions, imports, f-strings.
pub fn sample_program(lines: usize) -> String {
    let mut out = String::from(
        "import math\nimport statistics\nfrom collections import Counter, defaultdict\nimport numpy as np\nimport pandas as pd\n\n",
    );
    let mut i = 0;
    while out.lines().count() < lines {
        out.push_str(&format!(
            "def feature_{i}(values, scale={i}):\n    \
                 \"\"\"Summarise one column.\"\"\"\n    \
                 clean = [v * scale for v in values if v is not None and v == v]\n    \
                 counts = Counter(round(v) for v in clean)\n    \
                 mean = statistics.fmean(clean) if clean else math.nan\n    \
                 return {{'mean': mean, 'top': counts.most_common(3), 'n': len(clean)}}\n\n\
             class Model{i}:\n    \
                 def __init__(self, weights):\n        \
                     self.weights = np.asarray(weights, dtype=float)\n\n    \
                 def predict(self, frame: pd.DataFrame) -> pd.Series:\n        \
                     scores = frame.to_numpy() @ self.weights[: frame.shape[1]]\n        \
                     return pd.Series(scores, index=frame.index, name=f'model_{i}')\n\n\
             table_{i} = defaultdict(list)\n\
             for k, v in zip(range(10), range(10, 20)):\n    \
                 table_{i}[k % 3].append(v ** 2)\n\
             print(f\"{{len(table_{i})}} groups, first={{table_{i}[0][:2]}}\")\n\n"
        ));
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::GuardProfile;

    fn standard() -> GuardPolicy {
        GuardSettings::profile(GuardProfile::Standard).policy(NetworkPolicy::None).unwrap()
    }

    #[test]
    fn coding_declarations() {
        assert_eq!(coding_of(" -*- coding: utf-7 -*-"), Some("utf-7"));
        assert_eq!(coding_of(" vim: set fileencoding=latin-1 :"), Some("latin-1"));
        assert_eq!(coding_of(" just a comment"), None);
        let f = check("# -*- coding: utf-7 -*-\nx = 1\n", &standard());
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].rule.as_str(), f[0].line), ("encoding", 1));
        assert!(check("#!/usr/bin/env python\n# coding: utf-8\nx = 1\n", &standard()).is_empty());
        // Only the first two lines count, as in CPython.
        assert!(check("x = 1\ny = 2\n# coding: utf-7\n", &standard()).is_empty());
    }

    #[test]
    fn syntax_errors_are_findings() {
        let f = check("def f(:\n    pass\n", &standard());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule, "syntax");
        assert_eq!(f[0].line, 1);
    }

    #[test]
    fn sample_program_is_clean_and_long_enough() {
        let p = sample_program(1000);
        assert!(p.lines().count() >= 1000);
        let f = check(&p, &standard());
        assert!(f.is_empty(), "{f:#?}");
    }

    #[test]
    fn bash_and_dunder_globals_are_refused() {
        let mut req = ExecRequest::python("echo hi");
        req.language = Language::Bash;
        req.guard = GuardSettings::profile(GuardProfile::Standard);
        let d = screen(&req).unwrap();
        assert_eq!(d.findings[0].rule, "language");
        let mut req = ExecRequest::python("print(x)");
        req.guard = GuardSettings::profile(GuardProfile::Standard);
        req.global_variables.insert("__builtins__".into(), serde_json::json!({}));
        assert_eq!(screen(&req).unwrap().findings[0].rule, "global-variable");
        req.guard = GuardSettings::default();
        assert!(screen(&req).is_none(), "guard off checks nothing");
    }

    #[test]
    fn denial_outcome_shape() {
        let mut req = ExecRequest::python("import os\nos.system('id')\n");
        req.guard = GuardSettings::profile(GuardProfile::Standard);
        let d = screen(&req).unwrap();
        let o = d.outcome("exe_1".into(), BackendKind::Process, Isolation::None);
        assert_eq!(o.status, airlock_core::Status::Denied);
        let e = o.error.as_ref().unwrap();
        assert_eq!(e.name, "GuardViolation");
        assert!(e.traceback.lines().count() > d.findings.len(), "{}", e.traceback);
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["guard_findings"][0]["rule"], "dangerous-module");
        assert_eq!(v["guard_findings"][0]["line"], 1);
        assert!(v["guard_findings"][0]["hint"].as_str().unwrap().contains("allowed imports: "));
    }
}

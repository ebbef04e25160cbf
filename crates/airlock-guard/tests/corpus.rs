//! The static checker against the corpus: every file under `corpus/denied/` must
//! produce the findings its header names (`# rule: a, b`), every file under
//! `corpus/allowed/` must produce none (no false positives on ordinary
//! data-analysis code).

use std::path::{Path, PathBuf};

use airlock_core::{GuardPolicy, GuardProfile, GuardSettings, NetworkPolicy};

/// A corpus file and what its header says.
struct Case {
    path: PathBuf,
    source: String,
    rules: Vec<String>,
    profile: GuardProfile,
}

fn header(source: &str, key: &str) -> Option<String> {
    source
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.trim_start_matches('#').trim().strip_prefix(key).map(|v| v.trim().to_string()))
}

fn cases(dir: &str) -> Vec<Case> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(dir);
    let mut out: Vec<Case> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "py"))
        .map(|path| {
            let source = std::fs::read_to_string(&path).unwrap();
            let rules = header(&source, "rule:")
                .map(|r| r.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default();
            let profile = header(&source, "profile:").map(|p| p.parse().unwrap()).unwrap_or(GuardProfile::Standard);
            Case { path, source, rules, profile }
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    assert!(out.len() >= 10, "the {dir} corpus is missing files");
    out
}

fn policy(profile: GuardProfile) -> GuardPolicy {
    GuardSettings::profile(profile).policy(NetworkPolicy::None).unwrap()
}

#[test]
fn every_denied_file_triggers_its_rules() {
    let mut failures = Vec::new();
    for case in cases("denied") {
        let name = case.path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!case.rules.is_empty(), "{name}: the header must state the rule it triggers (# rule: ...)");
        let findings = if case.rules == ["global-variable"] {
            let mut req = airlock_core::ExecRequest::python(case.source.clone());
            req.guard = GuardSettings::profile(case.profile);
            req.global_variables.insert("__builtins__".into(), serde_json::json!({}));
            airlock_guard::screen(&req).map(|d| d.findings).unwrap_or_default()
        } else {
            airlock_guard::check(&case.source, &policy(case.profile))
        };
        let found: Vec<&str> = findings.iter().map(|f| f.rule.as_str()).collect();
        if case.rules == ["runtime"] {
            // Only the runtime layer can see these; the static check must pass them
            // (tests/runtime.rs runs them).
            if !found.is_empty() {
                failures.push(format!("{name}: marked runtime-only but the static check found {found:?}"));
            }
            continue;
        }
        for rule in &case.rules {
            if !found.contains(&rule.as_str()) {
                failures.push(format!("{name}: expected rule {rule}, got {found:?}"));
            }
        }
        for f in &findings {
            assert!(f.line >= 1 || f.rule == "global-variable", "{name}: finding without a line: {f}");
            assert!(!f.hint.is_empty() && !f.text.is_empty(), "{name}: empty hint or text: {f}");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn no_allowed_file_has_findings() {
    let mut failures = Vec::new();
    for case in cases("allowed") {
        let findings = airlock_guard::check(&case.source, &policy(case.profile));
        for f in findings {
            failures.push(format!("{}: {f}", case.path.file_name().unwrap().to_string_lossy()));
        }
    }
    assert!(failures.is_empty(), "false positives:\n{}", failures.join("\n"));
}

#[test]
fn findings_point_at_the_offending_code() {
    let src = "import math\nx = 1\nvalue = ().__class__\nimport os\n";
    let f = airlock_guard::check(src, &policy(GuardProfile::Standard));
    assert_eq!(f.len(), 2, "{f:#?}");
    assert_eq!(
        (f[0].rule.as_str(), f[0].line, f[0].column, f[0].text.as_str()),
        ("dunder-attribute", 3, 12, "__class__")
    );
    assert!(f[0].hint.contains("type(obj)"), "{}", f[0].hint);
    assert_eq!((f[1].rule.as_str(), f[1].line, f[1].column, f[1].text.as_str()), ("dangerous-module", 4, 8, "os"));
    assert!(
        f[1].hint.contains("import of 'os' is not allowed") && f[1].hint.contains("allowed imports: "),
        "{}",
        f[1].hint
    );
    assert!(f[1].hint.contains("pandas"), "the hint lists the allowed imports: {}", f[1].hint);
}

#[test]
fn overrides_change_the_verdict() {
    let src = "import requests\nwith open('data.txt') as f:\n    print(f.read())\n";
    let strict_off = policy(GuardProfile::Standard);
    let rules: Vec<String> = airlock_guard::check(src, &strict_off).into_iter().map(|f| f.rule).collect();
    assert_eq!(rules, ["import", "banned-name"]);
    let settings = GuardSettings {
        allow_imports: vec!["requests".into()],
        allow_open: true,
        ..GuardSettings::profile(GuardProfile::Standard)
    };
    let p = settings.policy(NetworkPolicy::None).unwrap();
    assert!(airlock_guard::check(src, &p).is_empty());
    // A wildcard allows a package and its submodules; a plain name does not.
    let p = GuardSettings { allow_imports: vec!["sklearn.*".into()], ..GuardSettings::profile(GuardProfile::Standard) }
        .policy(NetworkPolicy::None)
        .unwrap();
    assert!(airlock_guard::check("import sklearn.linear_model\nimport sklearn\n", &p).is_empty());
    let f = airlock_guard::check("import matplotlib.cbook\n", &p);
    assert!(f[0].hint.contains("its parent 'matplotlib' is allowed"), "{}", f[0].hint);
}

#[test]
fn strict_is_stricter_than_standard() {
    for case in cases("allowed") {
        if case.source.contains("import numpy") || case.source.contains("import pandas") {
            let f = airlock_guard::check(&case.source, &policy(GuardProfile::Strict));
            assert!(f.iter().any(|f| f.rule == "import"), "{}: strict must refuse numpy/pandas", case.path.display());
        }
    }
}

/// Hostile shapes must give a finding, never a crash: the host checks code on whatever
/// thread serves the request (a 2 MiB async worker, say), so this runs on a 1 MiB stack.
#[test]
fn deep_code_is_refused_without_exhausting_the_stack() {
    let cases: Vec<(String, &str)> = vec![
        (format!("{}1\n", "-".repeat(100_000)), "nests too deeply"),
        (format!("x = {}\n", vec!["1"; 200_000].join("+")), "nests too deeply"),
        (format!("x = {}y\n", "not ".repeat(50_000)), "nests too deeply"),
        (format!("x = a{}\n", ".b".repeat(50_000)), "nests too deeply"),
        (format!("x = {}1{}\n", "(".repeat(5_000), ")".repeat(5_000)), "parentheses"),
        (format!("x = {}1{}\n", "[".repeat(150), "]".repeat(150)), ""),
        // Just under the limit: walked (on a grown stack) and found clean.
        (format!("x = {}\n", vec!["1"; 2_400].join(" + ")), ""),
        (format!("x = {}1\n", "-".repeat(2_400)), ""),
    ];
    let p = policy(GuardProfile::Standard);
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || {
            for (src, expect) in cases {
                let f = airlock_guard::check(&src, &p);
                if expect.is_empty() {
                    assert!(f.is_empty(), "{f:?}");
                } else {
                    assert_eq!(f.len(), 1, "{f:?}");
                    assert_eq!(f[0].rule, "syntax");
                    assert!(f[0].hint.contains(expect), "{}", f[0].hint);
                }
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

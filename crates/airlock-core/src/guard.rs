//! The guard's contract: which profile a request asks for ([`GuardSettings`]), the
//! policy that profile resolves to ([`GuardPolicy`], what the static checker in
//! `airlock-guard` and the runtime audit hook in the guest driver both enforce), and
//! what a violation looks like ([`GuardFinding`]).
//!
//! The guard is a **safety net, not a boundary**: it refuses code that reaches for
//! the usual escape hatches of Python-level sandboxes (imports outside an allow-list,
//! `eval`/`exec`, dunder and frame walks, `ctypes`, `pickle`), but the boundary is
//! the backend (`jail`, `wasm`, `microvm`). Its default is `off`.
//!
//! The lists here are data only; the parser-based checker lives in `airlock-guard`,
//! the runtime layer in the guest driver (`driver.py`, installed per sandbox).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Error;
use crate::request::NetworkPolicy;

/// A named guard policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GuardProfile {
    /// No guard (the default): the backend is the only boundary.
    #[default]
    Off,
    /// For data analysis: the scientific stack (numpy, pandas, matplotlib, scipy)
    /// and a computation-oriented standard library may be imported; `eval`/`exec`,
    /// dunder and frame access, `ctypes`/`pickle`/`marshal` and the like are refused.
    Standard,
    /// Computation only: a small standard-library allow-list, no third-party
    /// packages, no `getattr`-family calls, no private (`_x`) attributes, no
    /// `.format()` on templates that are not literals.
    Strict,
}

impl GuardProfile {
    /// The lowercase name used on the wire and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardProfile::Off => "off",
            GuardProfile::Standard => "standard",
            GuardProfile::Strict => "strict",
        }
    }

    /// Every profile.
    pub const ALL: [GuardProfile; 3] = [GuardProfile::Off, GuardProfile::Standard, GuardProfile::Strict];
}

impl std::fmt::Display for GuardProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for GuardProfile {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        GuardProfile::ALL
            .into_iter()
            .find(|p| p.as_str() == s.to_ascii_lowercase())
            .ok_or_else(|| Error::invalid(format!("unknown guard profile '{s}': use off, standard or strict")))
    }
}

/// The guard a request asks for: a profile plus per-request overrides.
///
/// Omitted means `{"profile": "off"}`. Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GuardSettings {
    /// `off` (default), `standard` or `strict`.
    pub profile: GuardProfile,
    /// Modules to allow on top of the profile's list, e.g. `requests`. An entry
    /// allows exactly that module; `pkg.*` allows `pkg` and all of its submodules.
    /// A submodule is never allowed just because its parent is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_imports: Vec<String>,
    /// Allow the `open()` builtin (and `io.open`). Files are still confined at run
    /// time: writes only inside the workspace, reads inside the workspace and the
    /// interpreter's own directories.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_open: bool,
}

impl GuardSettings {
    /// A guard with this profile and no overrides.
    pub fn profile(profile: GuardProfile) -> Self {
        GuardSettings { profile, ..GuardSettings::default() }
    }

    /// True when the guard is off (nothing is checked).
    pub fn is_off(&self) -> bool {
        self.profile == GuardProfile::Off
    }

    /// Checks the overrides: module names must be dotted identifiers (optionally
    /// ending in `.*`), and overrides need a profile that is not `off`.
    pub fn validate(&self) -> Result<(), Error> {
        if self.is_off() && (!self.allow_imports.is_empty() || self.allow_open) {
            return Err(Error::invalid(
                "guard overrides (allow_imports, allow_open) were given but guard.profile is 'off'; \
                 set guard.profile to 'standard' or 'strict', or drop the overrides",
            ));
        }
        for m in &self.allow_imports {
            if !valid_module_pattern(m) {
                return Err(Error::invalid(format!(
                    "guard.allow_imports: '{m}' is not a module name; use a dotted name such as 'requests' or \
                     'scipy.stats', or 'pkg.*' for a package and all its submodules"
                )));
            }
        }
        Ok(())
    }

    /// The policy these settings resolve to, or `None` when the guard is off.
    /// `network` is the request's network policy: the runtime layer refuses socket
    /// connections unless it is `host`.
    pub fn policy(&self, network: NetworkPolicy) -> Option<GuardPolicy> {
        let strict = match self.profile {
            GuardProfile::Off => return None,
            GuardProfile::Standard => false,
            GuardProfile::Strict => true,
        };
        let base: &[&str] = if strict { STRICT_IMPORTS } else { STANDARD_IMPORTS };
        let mut allowed_imports: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        allowed_imports.extend(self.allow_imports.iter().cloned());
        allowed_imports.sort();
        allowed_imports.dedup();
        let mut denied_builtins: Vec<String> = DENIED_BUILTINS.iter().map(|s| s.to_string()).collect();
        if !self.allow_open {
            denied_builtins.push("open".into());
        }
        Some(GuardPolicy {
            profile: self.profile,
            allowed_imports,
            allow_open: self.allow_open,
            allow_network: network == NetworkPolicy::Host,
            private_attributes: !strict,
            denied_builtins,
            denied_attributes: INTERNAL_ATTRIBUTES.iter().chain(MODULE_ATTRIBUTES).map(|s| s.to_string()).collect(),
            safe_dunders: SAFE_DUNDERS.iter().map(|s| s.to_string()).collect(),
        })
    }
}

/// `a.b.c` or `a.b.*` with identifier parts.
fn valid_module_pattern(m: &str) -> bool {
    let body = m.strip_suffix(".*").unwrap_or(m);
    !body.is_empty()
        && body.split('.').all(|part| {
            let mut chars = part.chars();
            chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
                && chars.all(|c| c == '_' || c.is_alphanumeric())
        })
}

/// A resolved guard policy: what the static checker and the runtime layer enforce.
/// Sent to the guest driver in a `guard` frame before the first guarded cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GuardPolicy {
    /// The profile this policy came from.
    pub profile: GuardProfile,
    /// Modules the user's code may import (exact names; `pkg.*` for a subtree).
    pub allowed_imports: Vec<String>,
    /// Whether `open()` / `io.open` may be called by the user's code.
    pub allow_open: bool,
    /// Whether sockets may connect (the request's network policy is `host`).
    pub allow_network: bool,
    /// Whether attributes starting with one underscore (`obj._x`) may be read.
    pub private_attributes: bool,
    /// Builtins the user's code may not name.
    pub denied_builtins: Vec<String>,
    /// Non-dunder attributes that may not be read: interpreter internals (frames,
    /// code objects, the class hierarchy) and modules that allowed packages happen to
    /// import (`matplotlib.subprocess`, `numpy.ctypeslib`).
    pub denied_attributes: Vec<String>,
    /// Dunder attributes that are safe to read (`__init__`, `__name__`, ...); every
    /// other `__x__` attribute is refused.
    pub safe_dunders: Vec<String>,
}

impl GuardPolicy {
    /// Whether `module` (a dotted name) may be imported by the user's code.
    pub fn allows_import(&self, module: &str) -> bool {
        self.allowed_imports.iter().any(|p| match p.strip_suffix(".*") {
            Some(root) => module == root || module.strip_prefix(root).is_some_and(|rest| rest.starts_with('.')),
            None => p == module,
        })
    }

    /// Whether the attribute name `__x__` is one of the safe dunders.
    pub fn is_safe_dunder(&self, name: &str) -> bool {
        self.safe_dunders.iter().any(|d| d == name)
    }
}

/// One reason the guard refused a program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GuardFinding {
    /// The rule, e.g. `import`, `banned-name`, `dunder-attribute` (see docs/guard.md).
    pub rule: String,
    /// 1-based line of the offending code.
    pub line: u32,
    /// 1-based column (in characters) of the offending code.
    pub column: u32,
    /// The offending source text (shortened when long).
    pub text: String,
    /// One line a model can act on, e.g. "import of 'os' is not allowed; allowed imports: ...".
    pub hint: String,
}

impl std::fmt::Display for GuardFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}: [{}] {} — {}", self.line, self.column, self.rule, self.text, self.hint)
    }
}

/// Modules `standard` lets the user's code import.
pub const STANDARD_IMPORTS: &[&str] = &[
    // the standard library's computation and data modules
    "abc",
    "array",
    "base64",
    "bisect",
    "calendar",
    "cmath",
    "collections",
    "collections.abc",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "enum",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "io",
    "itertools",
    "json",
    "math",
    "numbers",
    "operator",
    "pprint",
    "random",
    "re",
    "statistics",
    "string",
    "textwrap",
    "time",
    "typing",
    "unicodedata",
    "uuid",
    "zoneinfo",
    // the scientific stack
    "numpy",
    "numpy.fft",
    "numpy.linalg",
    "numpy.ma",
    "numpy.polynomial",
    "numpy.random",
    "pandas",
    "matplotlib",
    "matplotlib.cm",
    "matplotlib.colors",
    "matplotlib.dates",
    "matplotlib.gridspec",
    "matplotlib.patches",
    "matplotlib.pyplot",
    "matplotlib.ticker",
    "mpl_toolkits.mplot3d",
    "scipy",
    "scipy.integrate",
    "scipy.interpolate",
    "scipy.linalg",
    "scipy.optimize",
    "scipy.signal",
    "scipy.sparse",
    "scipy.spatial",
    "scipy.special",
    "scipy.stats",
    "seaborn",
];

/// Modules `strict` lets the user's code import: pure computation.
pub const STRICT_IMPORTS: &[&str] = &[
    "bisect",
    "cmath",
    "collections",
    "dataclasses",
    "datetime",
    "decimal",
    "enum",
    "fractions",
    "functools",
    "heapq",
    "itertools",
    "json",
    "math",
    "numbers",
    "operator",
    "random",
    "re",
    "statistics",
    "string",
    "typing",
];

/// Builtins the user's code may not name under any profile (`open` is added unless
/// `allow_open`). `getattr`, `setattr` and `delattr` are handled separately: they may
/// be called directly with a literal, non-dunder name (never under `strict`).
pub const DENIED_BUILTINS: &[&str] = &[
    "eval",
    "exec",
    "compile",
    "__import__",
    "globals",
    "locals",
    "vars",
    "breakpoint",
    "input",
    "help",
    "license",
    "credits",
    "copyright",
];

/// Attributes without underscores that reach interpreter internals: frames, code
/// objects, tracebacks, the class hierarchy.
pub const INTERNAL_ATTRIBUTES: &[&str] = &[
    "gi_frame",
    "gi_code",
    "gi_yieldfrom",
    "cr_frame",
    "cr_code",
    "cr_await",
    "cr_origin",
    "ag_frame",
    "ag_code",
    "ag_await",
    "f_back",
    "f_globals",
    "f_locals",
    "f_builtins",
    "f_code",
    "f_trace",
    "tb_frame",
    "tb_next",
    "co_code",
    "co_consts",
    "co_names",
    "func_globals",
    "func_code",
    "mro",
];

/// Attribute names that are modules an allowed package happens to import
/// (`matplotlib.subprocess`, `numpy.ctypeslib.ctypes`): reading them reaches modules
/// the allow-list refuses.
pub const MODULE_ATTRIBUTES: &[&str] = &[
    "os",
    "sys",
    "subprocess",
    "builtins",
    "importlib",
    "ctypes",
    "ctypeslib",
    "pickle",
    "marshal",
    "socket",
    "shutil",
    "posix",
    "pty",
    "gc",
    "inspect",
    "_posixsubprocess",
    "multiprocessing",
    "_thread",
];

/// Dunder attributes that are safe to read or call: object protocol methods a
/// program calls on purpose (`super().__init__()`), and descriptive strings.
/// Everything else spelled `__x__` is refused, in particular `__class__`, `__mro__`,
/// `__bases__`, `__subclasses__`, `__globals__`, `__builtins__`, `__code__`,
/// `__closure__`, `__dict__`, `__getattribute__`, `__reduce__`, `__self__`.
pub const SAFE_DUNDERS: &[&str] = &[
    "__init__",
    "__new__",
    "__post_init__",
    "__name__",
    "__qualname__",
    "__doc__",
    "__module__",
    "__version__",
    "__all__",
    "__slots__",
    "__annotations__",
    "__cause__",
    "__context__",
    "__len__",
    "__iter__",
    "__next__",
    "__contains__",
    "__getitem__",
    "__setitem__",
    "__delitem__",
    "__enter__",
    "__exit__",
    "__str__",
    "__repr__",
    "__format__",
    "__hash__",
    "__bool__",
    "__eq__",
    "__ne__",
    "__lt__",
    "__le__",
    "__gt__",
    "__ge__",
    "__add__",
    "__sub__",
    "__mul__",
    "__matmul__",
    "__truediv__",
    "__floordiv__",
    "__mod__",
    "__pow__",
    "__neg__",
    "__pos__",
    "__abs__",
    "__radd__",
    "__rsub__",
    "__rmul__",
    "__rtruediv__",
    "__iadd__",
    "__isub__",
    "__imul__",
    "__call__",
    "__float__",
    "__int__",
    "__index__",
    "__round__",
];

/// Modules that run or load arbitrary code by design; named in their own findings.
pub const DANGEROUS_MODULES: &[(&str, &str)] = &[
    ("ctypes", "ctypes calls C functions directly (e.g. libc.system) and bypasses every Python-level check"),
    ("_ctypes", "ctypes calls C functions directly (e.g. libc.system) and bypasses every Python-level check"),
    ("cffi", "cffi calls C functions directly and bypasses every Python-level check"),
    ("pickle", "unpickling runs arbitrary code; use json for data"),
    ("_pickle", "unpickling runs arbitrary code; use json for data"),
    ("cPickle", "unpickling runs arbitrary code; use json for data"),
    ("dill", "unpickling runs arbitrary code; use json for data"),
    ("shelve", "shelve unpickles and so runs arbitrary code; use json for data"),
    ("marshal", "marshal loads code objects; use json for data"),
    ("os", "os runs programs and touches files outside the sandbox's rules"),
    ("posix", "posix runs programs and touches files outside the sandbox's rules"),
    ("subprocess", "running programs is not allowed"),
    ("pty", "running programs is not allowed"),
    ("sys", "sys exposes the interpreter's internals (sys.modules, frames, hooks)"),
    ("builtins", "builtins exposes eval, exec and __import__"),
    ("importlib", "importlib imports modules past the allow-list"),
    ("socket", "network access is not allowed"),
    ("gc", "gc exposes every object of the interpreter"),
    ("inspect", "inspect exposes frames and globals"),
    ("code", "code runs arbitrary source"),
    ("codeop", "codeop compiles arbitrary source"),
    ("types", "types builds functions and code objects"),
    ("multiprocessing", "starting processes is not allowed"),
    ("threading", "threads are not allowed"),
    ("_thread", "threads are not allowed"),
    ("signal", "signal handlers are not allowed"),
    ("shutil", "shutil changes files outside the sandbox's rules"),
    ("pathlib", "pathlib opens files past the open() rule; use pandas/numpy readers"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_off_and_omitted_fields_default() {
        let s: GuardSettings = serde_json::from_str("{}").unwrap();
        assert!(s.is_off());
        assert!(s.policy(NetworkPolicy::None).is_none());
        let s: GuardSettings = serde_json::from_str(r#"{"profile": "standard"}"#).unwrap();
        assert_eq!(s.profile, GuardProfile::Standard);
        assert_eq!(serde_json::to_value(&s).unwrap(), serde_json::json!({"profile": "standard"}));
    }

    #[test]
    fn unknown_fields_and_profiles_are_rejected() {
        let e = serde_json::from_str::<GuardSettings>(r#"{"profile": "standard", "allow": []}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `allow`"), "{e}");
        let e = serde_json::from_str::<GuardSettings>(r#"{"profile": "paranoid"}"#).unwrap_err();
        assert!(e.to_string().contains("paranoid"), "{e}");
        assert!("STRICT".parse::<GuardProfile>().is_ok());
        assert!("lax".parse::<GuardProfile>().unwrap_err().to_string().contains("off, standard or strict"));
    }

    #[test]
    fn validation_names_the_problem() {
        let s = GuardSettings { allow_open: true, ..GuardSettings::default() };
        assert!(s.validate().unwrap_err().to_string().contains("profile is 'off'"));
        let s =
            GuardSettings { allow_imports: vec!["os; rm".into()], ..GuardSettings::profile(GuardProfile::Standard) };
        assert!(s.validate().unwrap_err().to_string().contains("'os; rm'"));
        let s = GuardSettings {
            allow_imports: vec!["requests".into(), "sklearn.*".into(), "scipy.stats".into()],
            ..GuardSettings::profile(GuardProfile::Standard)
        };
        s.validate().unwrap();
    }

    #[test]
    fn the_schema_carries_the_guard() {
        use utoipa::OpenApi;
        #[derive(OpenApi)]
        #[openapi(components(schemas(crate::ExecRequest, crate::Outcome)))]
        struct Api;
        let v = serde_json::to_value(Api::openapi()).unwrap();
        let schemas = &v["components"]["schemas"];
        let req = &schemas["ExecRequest"];
        assert!(req["properties"]["guard"].is_object(), "{req}");
        assert!(!req["required"].as_array().unwrap().iter().any(|r| r == "guard"), "guard is optional");
        assert!(schemas["GuardSettings"]["properties"]["allow_imports"].is_object(), "{schemas}");
        assert!(schemas["Outcome"]["properties"]["guard_findings"].is_object());
        assert!(schemas["GuardFinding"]["properties"]["hint"].is_object());
    }

    #[test]
    fn policy_lists_and_overrides() {
        let s = GuardSettings {
            allow_imports: vec!["requests".into(), "sklearn.*".into()],
            ..GuardSettings::profile(GuardProfile::Standard)
        };
        let p = s.policy(NetworkPolicy::None).unwrap();
        assert!(p.allows_import("numpy") && p.allows_import("requests") && p.allows_import("matplotlib.pyplot"));
        assert!(p.allows_import("sklearn") && p.allows_import("sklearn.linear_model"));
        assert!(!p.allows_import("sklearnx") && !p.allows_import("os") && !p.allows_import("requests.adapters"));
        assert!(!p.allows_import("matplotlib.cbook"), "a submodule is not allowed because its parent is");
        assert!(p.denied_builtins.iter().any(|b| b == "open"));
        assert!(!p.allow_network && p.private_attributes);
        let strict = GuardSettings { allow_open: true, ..GuardSettings::profile(GuardProfile::Strict) };
        let p = strict.policy(NetworkPolicy::Host).unwrap();
        assert!(!p.allows_import("numpy") && p.allows_import("math"));
        assert!(!p.denied_builtins.iter().any(|b| b == "open"));
        assert!(p.allow_network && !p.private_attributes);
    }
}

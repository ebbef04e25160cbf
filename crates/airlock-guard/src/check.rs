//! The static checker: one walk over the syntax tree that ruff's parser builds,
//! collecting every violation of a [`GuardPolicy`].

use airlock_core::GuardFinding;
use airlock_core::GuardPolicy;
use airlock_core::guard::{DANGEROUS_MODULES, MODULE_ATTRIBUTES};
use ruff_python_ast::visitor::{self, Visitor};
use ruff_python_ast::{self as ast, Expr, Stmt};
use ruff_source_file::LineIndex;
use ruff_text_size::{Ranged, TextRange, TextSize};
use rustc_hash::FxHashSet;

/// Names a program may use even though they are dunders.
const SAFE_DUNDER_NAMES: &[&str] = &[
    "__name__",
    "__doc__",
    "__debug__",
    "__annotations__",
    "__qualname__",
    "__module__",
    "__all__",
    "__slots__",
    "__version__",
    "__file__",
];

/// Dunder names that have no business in a string literal of a data-analysis
/// program: they are what escapes spell out to reach interpreter internals
/// through `getattr`, format fields or `__dict__` subscripts.
const DANGEROUS_DUNDERS: &[&str] = &[
    "__class__",
    "__base__",
    "__bases__",
    "__mro__",
    "__subclasses__",
    "__globals__",
    "__builtins__",
    "__builtin__",
    "__import__",
    "__code__",
    "__closure__",
    "__dict__",
    "__getattribute__",
    "__getattr__",
    "__setattr__",
    "__delattr__",
    "__reduce__",
    "__reduce_ex__",
    "__self__",
    "__func__",
    "__wrapped__",
    "__loader__",
    "__spec__",
    "__traceback__",
    "__defaults__",
    "__kwdefaults__",
    "__init_subclass__",
    "__build_class__",
];

/// Longest excerpt of offending source put in a finding.
const MAX_TEXT_CHARS: usize = 80;
/// Longest string built by folding `'a' + 'b'` / `'_' * 2` that is scanned.
const MAX_FOLD_CHARS: usize = 4096;

/// Why a finding exists and what to do about it; the checker's output.
pub(crate) struct Checker<'a> {
    policy: &'a GuardPolicy,
    denied_builtins: FxHashSet<&'a str>,
    denied_attributes: FxHashSet<&'a str>,
    safe_dunders: FxHashSet<&'a str>,
    /// Builtin names rebound by `from <allowed module> import name`.
    shadowed: FxHashSet<&'a str>,
    strict: bool,
    source: &'a str,
    lines: LineIndex,
    pub(crate) findings: Vec<GuardFinding>,
    /// Depth of string-folding expressions being walked: literals inside them were
    /// scanned as part of the folded string.
    in_fold: u32,
}

impl<'a> Checker<'a> {
    pub(crate) fn new(source: &'a str, policy: &'a GuardPolicy) -> Self {
        Checker {
            policy,
            denied_builtins: policy.denied_builtins.iter().map(String::as_str).collect(),
            denied_attributes: policy.denied_attributes.iter().map(String::as_str).collect(),
            safe_dunders: policy.safe_dunders.iter().map(String::as_str).collect(),
            shadowed: FxHashSet::default(),
            strict: policy.profile == airlock_core::GuardProfile::Strict,
            source,
            lines: LineIndex::from_source_text(source),
            findings: Vec::new(),
            in_fold: 0,
        }
    }

    pub(crate) fn check_module(&mut self, body: &'a [Stmt]) {
        self.visit_body(body);
    }

    /// Records a finding at `range`.
    pub(crate) fn report(&mut self, rule: &str, range: TextRange, hint: String) {
        let at = self.lines.line_column(range.start(), self.source);
        let text = excerpt(&self.source[clamp(range, self.source.len())]);
        self.findings.push(GuardFinding {
            rule: rule.to_string(),
            line: at.line.get() as u32,
            column: at.column.get() as u32,
            text,
            hint,
        });
    }

    /// A finding at a byte offset with explicit text (comments, parse errors).
    pub(crate) fn report_at(&mut self, rule: &str, offset: usize, text: &str, hint: String) {
        let offset = offset.min(self.source.len());
        let at = self.lines.line_column(TextSize::new(offset as u32), self.source);
        self.findings.push(GuardFinding {
            rule: rule.to_string(),
            line: at.line.get() as u32,
            column: at.column.get() as u32,
            text: excerpt(text),
            hint,
        });
    }

    fn profile(&self) -> &'static str {
        self.policy.profile.as_str()
    }

    // ---- imports ----

    fn check_import(&mut self, module: &str, range: TextRange) {
        if module == "__future__" || self.policy.allows_import(module) {
            return;
        }
        let root = module.split('.').next().unwrap_or(module);
        let dangerous = DANGEROUS_MODULES.iter().find(|(m, _)| *m == module || *m == root);
        let allowed = self.allowed_imports_summary();
        match dangerous {
            Some((_, why)) => self.report(
                "dangerous-module",
                range,
                format!("import of '{module}' is not allowed: {why}; allowed imports: {allowed}"),
            ),
            None => {
                let parent_note = self
                    .parent_allowed(module)
                    .map(|p| format!(" (its parent '{p}' is allowed, but submodules must be listed themselves)"))
                    .unwrap_or_default();
                self.report(
                    "import",
                    range,
                    format!(
                        "import of '{module}' is not allowed{parent_note}; allowed imports: {allowed}; \
                         use one of these or ask for '{module}' in guard.allow_imports"
                    ),
                )
            }
        }
    }

    fn parent_allowed(&self, module: &str) -> Option<String> {
        let mut parts: Vec<&str> = module.split('.').collect();
        while parts.len() > 1 {
            parts.pop();
            let p = parts.join(".");
            if self.policy.allows_import(&p) {
                return Some(p);
            }
        }
        None
    }

    /// The allowed imports, submodules grouped under their package:
    /// `math, numpy (+ .fft .linalg), pandas, ...`.
    fn allowed_imports_summary(&self) -> String {
        let mut out: Vec<String> = Vec::new();
        let mut last_root = String::new();
        for m in &self.policy.allowed_imports {
            let (root, rest) = m.split_once('.').unwrap_or((m, ""));
            if root == last_root && !rest.is_empty() && !out.is_empty() {
                let entry = out.last_mut().expect("not empty");
                entry.push_str(if entry.ends_with(')') { "" } else { " (+" });
                if entry.ends_with(')') {
                    entry.pop();
                }
                entry.push_str(&format!(" .{rest})"));
            } else {
                out.push(m.clone());
                last_root = root.to_string();
            }
        }
        out.join(", ")
    }

    // ---- names ----

    fn check_name(&mut self, name: &str, store: bool, range: TextRange) {
        if self.shadowed.contains(name) {
            return;
        }
        if self.denied_builtins.contains(name) {
            let hint = banned_name_hint(name, self.profile());
            self.report("banned-name", range, hint);
        } else if matches!(name, "getattr" | "setattr" | "delattr") {
            // Direct calls are checked in `check_getattr_call` and never reach here.
            let hint = if self.strict {
                format!("{name}() is not allowed under guard profile 'strict'; use obj.attribute directly")
            } else {
                format!(
                    "{name} may only be called directly with a literal attribute name, e.g. {name}(obj, 'size'); \
                     do not pass it around or alias it"
                )
            };
            self.report("dynamic-attribute", range, hint);
        } else if store {
            // Class bodies bind protocol dunders (`__hash__ = None`, `__slots__`).
            self.check_binding(name, range);
        } else if is_dunder(name) && !SAFE_DUNDER_NAMES.contains(&name) && !self.safe_dunders.contains(name) {
            self.report(
                "dunder-name",
                range,
                format!("the name '{name}' reaches interpreter internals and is not allowed; use ordinary names"),
            );
        }
    }

    /// A binding identifier (parameter, alias, except name, global, match capture).
    fn check_binding(&mut self, name: &str, range: TextRange) {
        if DANGEROUS_DUNDERS.contains(&name) {
            self.report(
                "dunder-name",
                range,
                format!("binding the name '{name}' is not allowed (it shadows interpreter internals); rename it"),
            );
        }
    }

    // ---- attributes ----

    /// Checks the attribute name `attr` (read, written, deleted or matched).
    fn check_attribute(&mut self, attr: &str, range: TextRange) {
        if let Some((rule, hint)) = self.attribute_violation(attr) {
            self.report(rule, range, hint);
        }
    }

    fn attribute_violation(&self, attr: &str) -> Option<(&'static str, String)> {
        if is_dunder(attr) {
            if self.safe_dunders.contains(attr) {
                return None;
            }
            let hint = match attr {
                "__class__" => {
                    "obj.__class__ is not allowed; use type(obj) (and type(obj).__name__ for its name)".into()
                }
                "__dict__" => {
                    "obj.__dict__ is not allowed; use dataclasses.asdict(obj) or read the attributes you need".into()
                }
                _ => format!(
                    "the attribute '{attr}' reaches interpreter internals and is not allowed; \
                     use the object's public API"
                ),
            };
            return Some(("dunder-attribute", hint));
        }
        if MODULE_ATTRIBUTES.contains(&attr) {
            return Some((
                "module-attribute",
                format!(
                    "'.{attr}' reaches the module '{attr}', which the guard does not allow; \
                     use only the public API of allowed modules"
                ),
            ));
        }
        if self.denied_attributes.contains(attr) {
            return Some((
                "internal-attribute",
                format!(
                    "the attribute '{attr}' exposes frames, code objects or the class hierarchy and is not \
                     allowed; use the object's public API"
                ),
            ));
        }
        if !self.policy.private_attributes && attr.starts_with('_') {
            return Some((
                "private-attribute",
                format!(
                    "private attributes such as '{attr}' are not allowed under guard profile '{}'; \
                     use public attributes",
                    self.profile()
                ),
            ));
        }
        None
    }

    // ---- calls ----

    /// `getattr(obj, 'name')` and friends. Returns true when the callee was handled
    /// (so the walk must not report the bare name again).
    fn check_getattr_call(&mut self, call: &'a ast::ExprCall) -> bool {
        let Expr::Name(func) = call.func.as_ref() else { return false };
        let name = func.id.as_str();
        let (name_arg, kind) = match name {
            "getattr" | "setattr" | "delattr" | "hasattr" => (call.arguments.args.get(1), name),
            _ => return false,
        };
        if kind == "hasattr" {
            // hasattr returns a bool: it leaks no object, whatever the name.
            return true;
        }
        if self.strict {
            self.report(
                "dynamic-attribute",
                call.range(),
                format!("{kind}() is not allowed under guard profile 'strict'; use obj.attribute directly"),
            );
            return true;
        }
        let literal = name_arg.and_then(|a| match a {
            Expr::StringLiteral(s) => Some(s.value.to_str().to_string()),
            _ => None,
        });
        match literal {
            Some(attr) => {
                if let Some((rule, hint)) = self.attribute_violation(&attr) {
                    self.report(rule, call.range(), hint);
                }
            }
            None => self.report(
                "dynamic-attribute",
                call.range(),
                format!(
                    "{kind}() with a computed attribute name is not allowed; write obj.attribute, or pass the \
                     name as a string literal, e.g. {kind}(obj, 'size')"
                ),
            ),
        }
        true
    }

    /// `operator.attrgetter(...)` / `methodcaller(...)`: the same rule as getattr.
    fn check_getter_factory(&mut self, call: &'a ast::ExprCall) {
        let callee = match call.func.as_ref() {
            Expr::Name(n) => n.id.as_str(),
            Expr::Attribute(a) => a.attr.id.as_str(),
            _ => return,
        };
        if callee != "attrgetter" && callee != "methodcaller" {
            return;
        }
        let args: Vec<&Expr> = if callee == "methodcaller" {
            call.arguments.args.first().into_iter().collect()
        } else {
            call.arguments.args.iter().collect()
        };
        for a in args {
            match a {
                Expr::StringLiteral(s) => {
                    let text = s.value.to_str().to_string();
                    for part in text.split('.') {
                        if let Some((rule, hint)) = self.attribute_violation(part) {
                            self.report(rule, a.range(), hint);
                        }
                    }
                }
                _ => self.report(
                    "dynamic-attribute",
                    a.range(),
                    format!("{callee}() with a computed attribute name is not allowed; pass a string literal"),
                ),
            }
        }
    }

    /// `.format(...)` / `.format_map(...)` on something that is not a literal (strict).
    fn check_format_call(&mut self, call: &'a ast::ExprCall) {
        if !self.strict {
            return;
        }
        let Expr::Attribute(attr) = call.func.as_ref() else { return };
        if !matches!(attr.attr.id.as_str(), "format" | "format_map" | "vformat") {
            return;
        }
        if matches!(attr.value.as_ref(), Expr::StringLiteral(_) | Expr::FString(_)) {
            return;
        }
        self.report(
            "format-call",
            call.range(),
            "under guard profile 'strict' .format() is only allowed on a string literal; use an f-string".into(),
        );
    }

    /// Calls that unpickle: `pd.read_pickle(...)`, `np.load(..., allow_pickle=True)`.
    fn check_unpickling_call(&mut self, call: &'a ast::ExprCall) {
        if let Expr::Attribute(a) = call.func.as_ref()
            && a.attr.id.as_str() == "read_pickle"
        {
            self.report(
                "dangerous-call",
                call.range(),
                "read_pickle() unpickles, and unpickling runs code; use pd.read_csv, pd.read_json or \
                 pd.read_parquet"
                    .into(),
            );
        }
        for kw in &call.arguments.keywords {
            if kw.arg.as_ref().is_some_and(|a| a.id.as_str() == "allow_pickle")
                && !matches!(&kw.value, Expr::BooleanLiteral(b) if !b.value)
            {
                self.report(
                    "dangerous-call",
                    kw.range(),
                    "allow_pickle lets numpy unpickle, and unpickling runs code; save arrays with np.save and \
                     load them without allow_pickle"
                        .into(),
                );
            }
        }
    }

    /// `io.open(...)` / `io.FileIO(...)` when `open` is not allowed.
    fn check_io_open(&mut self, attr: &'a ast::ExprAttribute) {
        if self.policy.allow_open {
            return;
        }
        if let Expr::Name(base) = attr.value.as_ref()
            && matches!(base.id.as_str(), "io" | "_io" | "codecs")
            && matches!(attr.attr.id.as_str(), "open" | "open_code" | "FileIO")
        {
            let hint = banned_name_hint("open", self.profile());
            self.report("banned-name", attr.range(), hint);
        }
    }

    // ---- strings ----

    /// Scans the text of a string literal (or of a folded concatenation).
    fn check_string(&mut self, text: &str, range: TextRange) {
        if !text.contains('{') && !text.contains("__") {
            return;
        }
        for field in format_fields(text) {
            for part in field_attributes(&field) {
                let bad = if is_dunder(part) {
                    !self.safe_dunders.contains(part)
                } else {
                    self.denied_attributes.contains(part) || (!self.policy.private_attributes && part.starts_with('_'))
                };
                if bad {
                    self.report(
                        "format-string",
                        range,
                        format!(
                            "the format field '{{{field}}}' reads the attribute '{part}', which is not allowed; \
                             format plain values (e.g. f'{{x}}') instead"
                        ),
                    );
                }
            }
        }
        for word in identifier_words(text) {
            if DANGEROUS_DUNDERS.contains(&word) {
                self.report(
                    "dunder-string",
                    range,
                    format!(
                        "the string names '{word}', an interpreter internal; programs that need it are \
                         refused by the guard"
                    ),
                );
            }
        }
    }
}

impl<'a> Checker<'a> {
    fn stmt(&mut self, stmt: &'a Stmt) {
        match stmt {
            Stmt::Import(imp) => {
                for alias in &imp.names {
                    self.check_import(alias.name.id.as_str(), alias.range());
                    if let Some(asname) = &alias.asname {
                        self.check_binding(asname.id.as_str(), asname.range());
                    }
                }
            }
            Stmt::ImportFrom(imp) => {
                if imp.level > 0 {
                    self.report(
                        "import",
                        imp.range(),
                        "relative imports are not allowed; import allowed modules by their absolute name".into(),
                    );
                } else if let Some(module) = &imp.module {
                    self.check_import(module.id.as_str(), module.range());
                }
                let module = imp.module.as_ref().map(|m| m.id.as_str()).unwrap_or("");
                for alias in &imp.names {
                    let name = alias.name.id.as_str();
                    if name != "*" {
                        self.check_binding(name, alias.name.range());
                        // `from re import compile`, `from pandas import eval`: an allowed
                        // module's function of the same name; `from io import open` is
                        // open() by another route.
                        let opens = name.starts_with("open") || name == "FileIO";
                        let same_thing = matches!(module, "io" | "_io" | "codecs" | "builtins") && opens;
                        if !same_thing && alias.asname.is_none() && self.policy.allows_import(module) {
                            self.shadowed.insert(name);
                        } else if matches!(name, "getattr" | "setattr" | "delattr")
                            || self.denied_builtins.contains(name)
                            || same_thing
                        {
                            self.report(
                                "banned-name",
                                alias.range(),
                                format!(
                                    "importing '{name}' is not allowed; {}",
                                    banned_name_hint(name, self.profile())
                                ),
                            );
                        }
                    }
                    if let Some(asname) = &alias.asname {
                        self.check_binding(asname.id.as_str(), asname.range());
                    }
                }
            }
            Stmt::Global(g) => {
                for n in &g.names {
                    self.check_binding(n.id.as_str(), n.range());
                }
            }
            Stmt::Nonlocal(g) => {
                for n in &g.names {
                    self.check_binding(n.id.as_str(), n.range());
                }
            }
            _ => {}
        }
        visitor::walk_stmt(self, stmt);
    }

    fn expr(&mut self, expr: &'a Expr) {
        match expr {
            Expr::Name(n) => self.check_name(n.id.as_str(), n.ctx == ast::ExprContext::Store, n.range()),
            Expr::Attribute(a) => {
                self.check_attribute(a.attr.id.as_str(), a.attr.range());
                self.check_io_open(a);
            }
            Expr::Call(call) => {
                self.check_getter_factory(call);
                self.check_format_call(call);
                self.check_unpickling_call(call);
                if self.check_getattr_call(call) {
                    // Walk everything but the callee's name.
                    self.visit_arguments(&call.arguments);
                    return;
                }
            }
            Expr::StringLiteral(s) if self.in_fold == 0 => {
                self.check_string(s.value.to_str(), s.range());
            }
            Expr::BytesLiteral(b) if self.in_fold == 0 => {
                let bytes: Vec<u8> = b.value.iter().flat_map(|p| p.value.iter().copied()).collect();
                self.check_string(&String::from_utf8_lossy(&bytes), b.range());
            }
            Expr::FString(f) if self.in_fold == 0 => {
                if let Some(text) = fstring_literal_text(f) {
                    self.check_string(&text, f.range());
                }
            }
            Expr::BinOp(_) if self.in_fold == 0 => {
                if let Some(text) = fold_str(expr)
                    && !matches!(expr, Expr::StringLiteral(_))
                {
                    self.check_string(&text, expr.range());
                    self.in_fold += 1;
                    visitor::walk_expr(self, expr);
                    self.in_fold -= 1;
                    return;
                }
            }
            _ => {}
        }
        visitor::walk_expr(self, expr);
    }
}

impl<'a> Visitor<'a> for Checker<'a> {
    fn visit_stmt(&mut self, stmt: &'a Stmt) {
        stacker::maybe_grow(crate::nesting::RED_ZONE, crate::nesting::SEGMENT, || self.stmt(stmt));
    }

    fn visit_expr(&mut self, expr: &'a Expr) {
        stacker::maybe_grow(crate::nesting::RED_ZONE, crate::nesting::SEGMENT, || self.expr(expr));
    }

    fn visit_parameter(&mut self, parameter: &'a ast::Parameter) {
        self.check_binding(parameter.name.id.as_str(), parameter.name.range());
        visitor::walk_parameter(self, parameter);
    }

    fn visit_except_handler(&mut self, handler: &'a ast::ExceptHandler) {
        let ast::ExceptHandler::ExceptHandler(h) = handler;
        if let Some(name) = &h.name {
            self.check_binding(name.id.as_str(), name.range());
        }
        visitor::walk_except_handler(self, handler);
    }

    fn visit_pattern(&mut self, pattern: &'a ast::Pattern) {
        match pattern {
            ast::Pattern::MatchAs(p) => {
                if let Some(n) = &p.name {
                    self.check_binding(n.id.as_str(), n.range());
                }
            }
            ast::Pattern::MatchStar(p) => {
                if let Some(n) = &p.name {
                    self.check_binding(n.id.as_str(), n.range());
                }
            }
            ast::Pattern::MatchMapping(p) => {
                if let Some(n) = &p.rest {
                    self.check_binding(n.id.as_str(), n.range());
                }
            }
            _ => {}
        }
        visitor::walk_pattern(self, pattern);
    }

    fn visit_pattern_keyword(&mut self, keyword: &'a ast::PatternKeyword) {
        // `case C(__class__=x)` reads the attribute `__class__`.
        self.check_attribute(keyword.attr.id.as_str(), keyword.attr.range());
        visitor::walk_pattern_keyword(self, keyword);
    }
}

/// The hint for a banned builtin.
pub(crate) fn banned_name_hint(name: &str, profile: &str) -> String {
    match name {
        "open" => format!(
            "open() is not allowed under guard profile '{profile}'; read data with pandas (pd.read_csv('data.csv')) \
             or numpy (np.loadtxt), or ask for guard.allow_open"
        ),
        "eval" | "exec" | "compile" => {
            format!("{name}() runs code the guard cannot check and is not allowed; write the code directly")
        }
        "__import__" => "__import__() is not allowed; use an import statement of an allowed module".into(),
        "globals" | "locals" | "vars" => {
            format!("{name}() exposes namespaces and is not allowed; refer to variables by name")
        }
        "input" => "input() is not allowed: the sandbox has no interactive input; put the data in the code".into(),
        "breakpoint" => "breakpoint() is not allowed: there is no debugger; print values instead".into(),
        "help" | "license" | "credits" | "copyright" => {
            format!("{name}() starts an interactive pager and is not allowed; print what you need instead")
        }
        "getattr" | "setattr" | "delattr" => {
            format!("{name} may only be called directly with a literal attribute name")
        }
        _ => format!("'{name}' is not allowed under guard profile '{profile}'"),
    }
}

fn is_dunder(s: &str) -> bool {
    s.len() > 4 && s.starts_with("__") && s.ends_with("__")
}

fn clamp(range: TextRange, len: usize) -> std::ops::Range<usize> {
    let start = (range.start().to_usize()).min(len);
    let end = (range.end().to_usize()).min(len).max(start);
    start..end
}

/// The first line of `text`, at most [`MAX_TEXT_CHARS`] characters.
fn excerpt(text: &str) -> String {
    let first = text.lines().next().unwrap_or("");
    let mut out: String = first.chars().take(MAX_TEXT_CHARS).collect();
    if out.len() < first.len() || text.lines().nth(1).is_some() {
        out.push_str(" …");
    }
    out
}

/// The literal parts of an f-string, joined (`f"{{0.__class__}}"` is the text
/// `{0.__class__}`, a format template). `None` when there are none.
fn fstring_literal_text(f: &ast::ExprFString) -> Option<String> {
    let mut out = String::new();
    for part in f.value.iter() {
        match part {
            ast::FStringPart::Literal(s) => out.push_str(&s.value),
            ast::FStringPart::FString(fs) => {
                for el in fs.elements.iter() {
                    if let ast::InterpolatedStringElement::Literal(l) = el {
                        out.push_str(&l.value);
                    }
                }
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The value of a constant string expression built from literals with `+` and `*`
/// (`'{0.__cla' + 'ss__}'`, `'_' * 2 + 'class'`), if it is one of at most
/// [`MAX_FOLD_DEPTH`] levels.
fn fold_str(expr: &Expr) -> Option<String> {
    fold_str_within(expr, MAX_FOLD_DEPTH)
}

/// How many levels of `+`/`*` a folded string may have.
const MAX_FOLD_DEPTH: u32 = 64;

fn fold_str_within(expr: &Expr, depth: u32) -> Option<String> {
    if depth == 0 {
        return None;
    }
    let fold_str = |e: &Expr| fold_str_within(e, depth - 1);
    let s = match expr {
        Expr::StringLiteral(s) => s.value.to_str().to_string(),
        Expr::FString(f) => {
            // Only f-strings without interpolations are constants.
            let all_literal = f.value.iter().all(|p| match p {
                ast::FStringPart::Literal(_) => true,
                ast::FStringPart::FString(fs) => {
                    fs.elements.iter().all(|e| matches!(e, ast::InterpolatedStringElement::Literal(_)))
                }
            });
            if !all_literal {
                return None;
            }
            fstring_literal_text(f).unwrap_or_default()
        }
        Expr::BinOp(b) => match b.op {
            ast::Operator::Add => {
                let l = fold_str(&b.left)?;
                let r = fold_str(&b.right)?;
                l + &r
            }
            ast::Operator::Mult => {
                let (s, n) = match (fold_str(&b.left), fold_str(&b.right)) {
                    (Some(s), None) => (s, int_literal(&b.right)?),
                    (None, Some(s)) => (s, int_literal(&b.left)?),
                    _ => return None,
                };
                if s.len().saturating_mul(n) > MAX_FOLD_CHARS {
                    return None;
                }
                s.repeat(n)
            }
            _ => return None,
        },
        _ => return None,
    };
    (s.len() <= MAX_FOLD_CHARS).then_some(s)
}

fn int_literal(e: &Expr) -> Option<usize> {
    match e {
        Expr::NumberLiteral(n) => match &n.value {
            ast::Number::Int(i) => i.as_u64().and_then(|v| usize::try_from(v).ok()),
            _ => None,
        },
        _ => None,
    }
}

/// The field names of the replacement fields in a `str.format` template
/// (`'{0.__class__!r:>10}'` has the field `0.__class__`).
fn format_fields(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    if !text.contains('{') {
        return out;
    }
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '{' {
            if chars.get(i + 1) == Some(&'{') {
                i += 2;
                continue;
            }
            // The field name runs to '!', ':' or '}' (brackets may hold any of them).
            let mut j = i + 1;
            let mut name = String::new();
            let mut in_bracket = false;
            while j < chars.len() {
                let c = chars[j];
                if in_bracket {
                    if c == ']' {
                        in_bracket = false;
                    }
                } else if c == '[' {
                    in_bracket = true;
                } else if c == '!' || c == ':' || c == '}' || c == '{' {
                    break;
                }
                name.push(c);
                j += 1;
            }
            if !name.is_empty() {
                out.push(name);
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// The attribute names of a format field name (`0.a[1].__class__` → `a`, `__class__`).
fn field_attributes(field: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = field;
    // Drop the argument name (up to the first '.' or '[').
    match rest.find(['.', '[']) {
        Some(p) => rest = &rest[p..],
        None => return out,
    }
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            out.push(r[..end].trim());
            rest = &r[end..];
        } else if rest.starts_with('[') {
            let end = rest.find(']').map(|e| e + 1).unwrap_or(rest.len());
            rest = &rest[end..];
        } else {
            break;
        }
    }
    out
}

/// Maximal runs of identifier characters in `text`.
fn identifier_words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c == '_' || c.is_alphanumeric())).filter(|w| w.len() > 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_fields_and_attributes() {
        assert_eq!(format_fields("{0.__class__} {{x}} {y!r:>{w}} {a[b.c].d}"), ["0.__class__", "y", "w", "a[b.c].d"]);
        assert_eq!(field_attributes("0.__class__.__mro__"), ["__class__", "__mro__"]);
        assert_eq!(field_attributes("a[b.c].d"), ["d"]);
        assert!(field_attributes("x").is_empty());
    }

    #[test]
    fn excerpts_are_short() {
        assert_eq!(excerpt("abc"), "abc");
        assert_eq!(excerpt("abc\ndef"), "abc …");
        assert_eq!(excerpt(&"x".repeat(200)).chars().count(), MAX_TEXT_CHARS + 2);
    }
}

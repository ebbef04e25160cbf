//! How deeply a program nests, estimated from its tokens, so that the walk and the
//! destructor of its syntax tree (both recursive) stay within bounds. CPython refuses
//! code nested this deeply as well (a `SyntaxError` for parentheses and indentation, a
//! `RecursionError` while compiling for long chains), so nothing it would run is lost.

use ruff_python_ast::token::{Token, TokenKind};
use ruff_text_size::Ranged;

/// CPython's limit on nested brackets (`MAXLEVEL` in its tokenizer).
pub(crate) const MAX_BRACKETS: usize = 200;
/// CPython's limit on indentation levels (`MAXINDENT` in its tokenizer).
pub(crate) const MAX_INDENT: usize = 100;
/// The estimated syntax-tree depth refused: CPython 3.11 fails to compile unary,
/// binary, attribute, call and conditional chains from about 3,000 levels on.
pub(crate) const MAX_DEPTH: usize = 2_500;
/// Below this estimate the tree is dropped on the caller's stack.
pub(crate) const SHALLOW: usize = 256;
/// Stack to set aside per level when dropping a deeper tree.
pub(crate) const DROP_BYTES_PER_LEVEL: usize = 1024;
/// Stack left before the walk moves to a new segment, and the segment's size.
pub(crate) const RED_ZONE: usize = 128 * 1024;
/// A new stack segment for the walk.
pub(crate) const SEGMENT: usize = 4 * 1024 * 1024;

/// The deepest points of a program.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Nesting {
    /// An upper bound of the syntax tree's depth: open brackets, indentation, and the
    /// operators and keywords chained in one comma-separated item of each bracket.
    pub(crate) estimate: usize,
    estimate_at: usize,
    brackets: usize,
    brackets_at: usize,
    indent: usize,
    indent_at: usize,
}

impl Nesting {
    /// Why the program is too deep, at which byte offset; `None` when it is not.
    pub(crate) fn refusal(&self) -> Option<(usize, String)> {
        if self.brackets > MAX_BRACKETS {
            return Some((self.brackets_at, format!("too many nested parentheses (more than {MAX_BRACKETS})")));
        }
        if self.indent > MAX_INDENT {
            return Some((self.indent_at, format!("too many levels of indentation (more than {MAX_INDENT})")));
        }
        if self.estimate > MAX_DEPTH {
            return Some((self.estimate_at, format!("the expression nests too deeply (more than {MAX_DEPTH} levels)")));
        }
        None
    }
}

/// Tokens that add a level to the expression they appear in.
fn deepens(kind: TokenKind) -> bool {
    use TokenKind::*;
    matches!(
        kind,
        Plus | Minus
            | Star
            | Slash
            | Vbar
            | Amper
            | Less
            | Greater
            | Equal
            | Dot
            | Percent
            | EqEqual
            | NotEqual
            | LessEqual
            | GreaterEqual
            | Tilde
            | CircumFlex
            | LeftShift
            | RightShift
            | DoubleStar
            | DoubleSlash
            | ColonEqual
            | At
            | Rarrow
            | Exclamation
            | And
            | Or
            | Not
            | Is
            | In
            | If
            | Else
            | Lambda
            | Await
            | Yield
            | For
            | Async
    )
}

/// Measures a program's tokens (one pass, no recursion).
pub(crate) fn measure(tokens: &[Token]) -> Nesting {
    let mut n = Nesting::default();
    // Operators counted since the last comma at each open bracket (index 0: top level).
    let mut counters: Vec<usize> = vec![0];
    let mut sum = 0usize;
    let mut indent = 0usize;
    for t in tokens {
        let at = t.start().to_usize();
        match t.kind() {
            TokenKind::Lpar
            | TokenKind::Lsqb
            | TokenKind::Lbrace
            | TokenKind::FStringStart
            | TokenKind::TStringStart => {
                counters.push(0);
                if counters.len() - 1 > n.brackets {
                    n.brackets = counters.len() - 1;
                    n.brackets_at = at;
                }
            }
            TokenKind::Rpar | TokenKind::Rsqb | TokenKind::Rbrace | TokenKind::FStringEnd | TokenKind::TStringEnd
                if counters.len() > 1 =>
            {
                sum -= counters.pop().unwrap_or(0);
            }
            TokenKind::Comma | TokenKind::Semi => {
                if let Some(c) = counters.last_mut() {
                    sum -= *c;
                    *c = 0;
                }
            }
            TokenKind::Newline => {
                counters.truncate(1);
                counters[0] = 0;
                sum = 0;
            }
            TokenKind::Indent => {
                indent += 1;
                if indent > n.indent {
                    n.indent = indent;
                    n.indent_at = at;
                }
            }
            TokenKind::Dedent => indent = indent.saturating_sub(1),
            kind if deepens(kind) => {
                if let Some(c) = counters.last_mut() {
                    *c += 1;
                    sum += 1;
                }
            }
            _ => {}
        }
        let estimate = counters.len() - 1 + sum + indent;
        if estimate > n.estimate {
            n.estimate = estimate;
            n.estimate_at = at;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(src: &str) -> Nesting {
        measure(ruff_python_parser::parse_module(src).unwrap().tokens())
    }

    #[test]
    fn estimates_bound_real_depth() {
        assert!(of("x = 1\n").estimate <= 2);
        let flat = format!("x = [{}]\n", (0..5000).map(|i| format!("-{i}")).collect::<Vec<_>>().join(", "));
        assert!(of(&flat).refusal().is_none(), "a long flat list is not deep");
        let chain = format!("x = {}\n", vec!["1"; 3000].join(" + "));
        assert!(of(&chain).refusal().unwrap().1.contains("nests too deeply"));
        let parens = format!("x = {}1{}\n", "(".repeat(201), ")".repeat(201));
        assert!(of(&parens).refusal().unwrap().1.contains("parentheses"));
        let mut deep_block = String::new();
        for i in 0..101 {
            deep_block.push_str(&format!("{}if x:\n", " ".repeat(i)));
        }
        deep_block.push_str(&format!("{}pass\n", " ".repeat(101)));
        assert!(of(&deep_block).refusal().unwrap().1.contains("indentation"));
    }
}

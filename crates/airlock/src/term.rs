//! Guest text on a terminal: control characters are shown, never obeyed.
//!
//! What a sandbox prints is untrusted. Written raw to a terminal, its escape
//! sequences act on the user's terminal: OSC 52 writes the clipboard, DSR and other
//! queries make the terminal *type* its answer into whatever reads it next (the
//! user's shell, once `airlock run` exits), OSC 0/2 set the title, OSC 8 plants
//! links, cursor moves and erases rewrite what was printed before. So when a stream
//! is a terminal, [`Sanitizer`] passes text through except:
//!
//! * ESC, the other C0 controls and DEL are shown in caret notation (`^[`, `^G`,
//!   `^H`, `^?`): the rest of a sequence is then plain text (`^[]52;c;...^G`);
//! * C1 controls (U+0080 to U+009F, which some terminals obey as 8-bit CSI, OSC,
//!   DCS ...) are shown as their 7-bit equivalent, `^[` and a character (U+009B, CSI,
//!   as `^[[`);
//! * kept: newline, tab, carriage return (progress bars redraw their line with it),
//!   and colour: a complete SGR sequence (`ESC [` digits, `;`, `:` and `m`, at most
//!   [`MAX_SGR`] bytes) passes, so `ls --color=always` or a forced-colour test runner
//!   keeps its colours; once any passed, [`Sanitizer::finish`] resets them, so a
//!   guest cannot leave airlock's own lines hidden or recoloured.
//!
//! Output to a pipe or a file, and `--json`, stay byte-exact: only terminals get this.

/// The longest SGR sequence passed through (ESC included); longer ones are shown.
pub const MAX_SGR: usize = 64;

/// Neutralises one stream of guest text (stdout or stderr) for a terminal. Stateful:
/// an SGR sequence split across two chunks still passes.
#[derive(Debug, Default)]
pub struct Sanitizer {
    /// The start of what may be an SGR sequence (`ESC`, `ESC [`, parameters).
    pending: String,
    /// An SGR sequence went through: reset at the end.
    styled: bool,
}

impl Sanitizer {
    /// A sanitizer for a stream that is a terminal, `None` for one that is not (its
    /// bytes are written as they are).
    pub fn for_terminal(is_terminal: bool) -> Option<Sanitizer> {
        is_terminal.then(Sanitizer::default)
    }

    /// Appends to `out` what to print for `chunk`.
    pub fn push(&mut self, chunk: &str, out: &mut String) {
        for c in chunk.chars() {
            self.push_char(c, out);
        }
    }

    fn push_char(&mut self, c: char, out: &mut String) {
        if !self.pending.is_empty() {
            let params = self.pending.len() >= 2;
            if c == '[' && self.pending.len() == 1 {
                self.pending.push(c);
                return;
            }
            if params && c == 'm' {
                out.push_str(&self.pending);
                out.push('m');
                self.pending.clear();
                self.styled = true;
                return;
            }
            if params && (c.is_ascii_digit() || c == ';' || c == ':') && self.pending.len() + 1 < MAX_SGR {
                self.pending.push(c);
                return;
            }
            // Not an SGR sequence: show what was held, then this character on its own.
            self.show_pending(out);
        }
        match c {
            '\u{1b}' => self.pending.push(c),
            '\n' | '\t' | '\r' => out.push(c),
            '\u{0}'..='\u{1f}' => {
                out.push('^');
                out.push(char::from(c as u8 + 0x40));
            }
            '\u{7f}' => out.push_str("^?"),
            '\u{80}'..='\u{9f}' => {
                out.push_str("^[");
                out.push(char::from(c as u8 - 0x40));
            }
            _ => out.push(c),
        }
    }

    fn show_pending(&mut self, out: &mut String) {
        // The held text is ESC followed by printable ASCII.
        out.push_str("^[");
        out.push_str(&self.pending[1..]);
        self.pending.clear();
    }

    /// Appends what is still held (an unfinished sequence, shown) and, if colours
    /// went through, a reset.
    pub fn finish(&mut self, out: &mut String) {
        if !self.pending.is_empty() {
            self.show_pending(out);
        }
        if std::mem::take(&mut self.styled) {
            out.push_str("\x1b[0m");
        }
    }

    /// `text` as it should reach a terminal, in one piece (messages, not streams).
    pub fn clean(text: &str) -> String {
        let mut s = Sanitizer::default();
        let mut out = String::with_capacity(text.len());
        s.push(text, &mut out);
        s.finish(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&str]) -> String {
        let mut s = Sanitizer::default();
        let mut out = String::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn queries_clipboard_and_title_writes_are_shown_not_sent() {
        assert_eq!(run(&["\x1b]52;c;aGVsbG8=\x07"]), "^[]52;c;aGVsbG8=^G");
        assert_eq!(run(&["\x1b[6n"]), "^[[6n");
        assert_eq!(run(&["\x1b]0;pwned\x1b\\"]), "^[]0;pwned^[\\");
        assert_eq!(run(&["\x1bP$q\"p\x1b\\"]), "^[P$q\"p^[\\");
        assert_eq!(run(&["\x1b[2J\x1b[H\x1b[?1049h"]), "^[[2J^[[H^[[?1049h");
        assert_eq!(run(&["\x1b[21t"]), "^[[21t");
        assert_eq!(run(&["a\x08b\x00c\x7f"]), "a^Hb^@c^?");
        assert_eq!(run(&["\u{9b}6n\u{9d}52;c;x\u{9c}"]), "^[[6n^[]52;c;x^[\\");
        assert!(!run(&["\x1b]52;c;x\x07", "\x1b[6n", "\u{9b}6n"]).contains(['\u{1b}', '\u{7}', '\u{9b}']));
    }

    #[test]
    fn text_newlines_tabs_returns_and_unicode_pass() {
        assert_eq!(run(&["héllo\tworld\r\n", "🦀 ok\n"]), "héllo\tworld\r\n🦀 ok\n");
    }

    #[test]
    fn colours_pass_even_split_across_chunks_and_are_reset_at_the_end() {
        assert_eq!(run(&["\x1b[1;31mred\x1b[0m"]), "\x1b[1;31mred\x1b[0m\x1b[0m");
        assert_eq!(run(&["\x1b", "[38;2;1;2;3", "mx"]), "\x1b[38;2;1;2;3mx\x1b[0m");
        assert_eq!(run(&["\x1b[m"]), "\x1b[m\x1b[0m");
        // An SGR-looking start that turns into something else is shown, all of it.
        assert_eq!(run(&["\x1b[31", ";1H"]), "^[[31;1H");
        assert_eq!(run(&["\x1b[3"]), "^[[3", "an unfinished sequence at the end is shown");
        assert_eq!(run(&["\x1b\x1b[1m"]), "^[\x1b[1m\x1b[0m");
        // Overlong parameters are not passed.
        let long = format!("\x1b[{}m", "1;".repeat(40));
        assert!(run(&[&long]).starts_with("^[["));
        assert_eq!(Sanitizer::clean("plain"), "plain");
    }
}

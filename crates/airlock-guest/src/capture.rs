//! Output capture shared by every host loop: a cell's stdout and stderr kept within
//! one cap (`limits.output_bytes`, shared by both streams) and streamed as events in
//! whole UTF-8 characters. Bytes past the cap are dropped as they arrive, so a flood
//! never grows the host's memory.

use airlock_core::backend::EventSink;
use airlock_core::{ErrorInfo, Event, Status};

/// Captured output of one stream of one cell.
#[derive(Debug, Default)]
pub struct Stream {
    /// The bytes kept (at most the cap, together with the other stream).
    pub bytes: Vec<u8>,
    emitted: usize,
    /// True once bytes of this stream were dropped at the cap.
    pub truncated: bool,
    /// Whether the stream's source (a pipe) is still open; transports without pipes
    /// ignore it.
    pub open: bool,
}

impl Stream {
    /// A capture of an open pipe.
    pub fn pipe() -> Self {
        Stream { open: true, ..Stream::default() }
    }

    /// New text that forms complete UTF-8 characters, for streaming events. With
    /// `flush`, everything pending (an incomplete character becomes U+FFFD).
    pub fn take_new_text(&mut self, flush: bool) -> Option<String> {
        let pending = &self.bytes[self.emitted..];
        if pending.is_empty() {
            return None;
        }
        let upto = if flush {
            pending.len()
        } else {
            match std::str::from_utf8(pending) {
                Ok(_) => pending.len(),
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                Err(_) => pending.len(),
            }
        };
        if upto == 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&pending[..upto]).into_owned();
        self.emitted += upto;
        Some(text)
    }
}

/// Adds bytes to a capture within the cap shared by both streams (`total` counts
/// what both kept); returns true when the cap was passed (the rest was dropped).
pub fn accept(s: &mut Stream, bytes: &[u8], total: &mut u64, cap: u64) -> bool {
    let room = cap.saturating_sub(*total) as usize;
    let take = bytes.len().min(room);
    s.bytes.extend_from_slice(&bytes[..take]);
    *total += take as u64;
    if take < bytes.len() {
        s.truncated = true;
        return true;
    }
    false
}

/// Sends what is new in `s` as a stdout (`is_out`) or stderr event.
pub fn emit(s: &mut Stream, is_out: bool, flush: bool, events: &mut EventSink<'_>) {
    if let Some(text) = s.take_new_text(flush) {
        events(if is_out { Event::Stdout { text } } else { Event::Stderr { text } });
    }
}

/// The driver reports a cell the host stopped as `SandboxInterrupt`; callers see the
/// limit instead: `TimeoutError` or `OutputLimitError`, with the host's reason as its
/// message and last traceback line. Other errors are left as they are.
pub fn relabel_interrupt(e: &mut ErrorInfo, status: Status, reason: &str) {
    if e.name != "SandboxInterrupt" {
        return;
    }
    e.name = if status == Status::Timeout { "TimeoutError" } else { "OutputLimitError" }.into();
    e.value = reason.to_string();
    let body = e.traceback.trim_end().rsplit_once('\n').map(|(b, _)| b).unwrap_or("");
    e.traceback = format!("{body}\n{}: {reason}\n", e.name).trim_start().to_string();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_is_shared_and_characters_are_whole() {
        let (mut out, mut err) = (Stream::default(), Stream::default());
        let mut total = 0;
        assert!(!accept(&mut out, "é".as_bytes(), &mut total, 4));
        assert!(accept(&mut err, b"abc", &mut total, 4));
        assert_eq!((out.bytes.len(), err.bytes.len(), total), (2, 2, 4));
        assert!(err.truncated && !out.truncated);
        let mut s = Stream::default();
        accept(&mut s, &"é".as_bytes()[..1], &mut 0, 10);
        assert_eq!(s.take_new_text(false), None);
        s.bytes.push("é".as_bytes()[1]);
        assert_eq!(s.take_new_text(false).as_deref(), Some("é"));
    }
}

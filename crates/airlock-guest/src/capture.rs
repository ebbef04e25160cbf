//! Output capture shared by every host loop: a cell's stdout and stderr kept within
//! one cap (`limits.output_bytes`, shared by both streams) and streamed as events in
//! whole UTF-8 characters, and its rich results kept within another
//! (`limits.result_bytes`). Bytes past a cap are dropped as they arrive, so a flood
//! never grows the host's memory.

use airlock_core::backend::EventSink;
use airlock_core::units::format_size;
use airlock_core::{Cell, ErrorInfo, Event, Status};

use crate::protocol::CONTROL_FRAME_BYTES;

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

/// A cell's budget for rich results: the bytes of `result` frames (their JSON on the
/// wire) it may still keep.
#[derive(Debug, Clone)]
pub struct ResultBudget {
    left: u64,
    /// True once a result was dropped at the cap.
    pub truncated: bool,
}

impl ResultBudget {
    /// A budget of `cap` bytes (`limits.result_bytes`).
    pub fn new(cap: u64) -> Self {
        ResultBudget { left: cap, truncated: false }
    }

    /// The longest frame worth reading now: a frame the budget cannot take (and that
    /// is longer than any control frame) is dropped unread by the decoder.
    pub fn frame_allowance(&self) -> usize {
        usize::try_from(self.left).unwrap_or(usize::MAX).max(CONTROL_FRAME_BYTES)
    }

    /// Charges a result of `bytes`; false (and `truncated`) when it does not fit, and
    /// then the result is dropped.
    pub fn admit(&mut self, bytes: usize) -> bool {
        let bytes = bytes as u64;
        if bytes > self.left {
            self.truncated = true;
            return false;
        }
        self.left -= bytes;
        true
    }

    /// Records a frame dropped unread for being longer than [`ResultBudget::frame_allowance`].
    pub fn dropped(&mut self) {
        self.truncated = true;
    }
}

/// The reason of an `output_limit` outcome: which caps were passed.
pub fn output_limit_reason(cell: &Cell, streams: bool, results: bool) -> String {
    let streams_part = format!("stdout and stderr exceeded {} (limits.output_bytes)", format_size(cell.output_bytes));
    let results_part = format!("rich results exceeded {} (limits.result_bytes)", format_size(cell.result_bytes));
    match (streams, results) {
        (true, true) => format!("{streams_part} and {results_part}; the rest was discarded"),
        (false, true) => format!("{results_part}; the results past it were discarded"),
        _ => format!("{streams_part}; the rest was discarded"),
    }
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
    fn result_budget_drops_what_does_not_fit() {
        let mut b = ResultBudget::new(100);
        assert_eq!(b.frame_allowance(), CONTROL_FRAME_BYTES);
        assert!(b.admit(60));
        assert!(!b.admit(60) && b.truncated);
        assert!(b.admit(40));
        let big = ResultBudget::new(64 << 20);
        assert_eq!(big.frame_allowance(), 64 << 20);
    }

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

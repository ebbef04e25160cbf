//! The host <-> guest wire protocol, version [`PROTOCOL_VERSION`].
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON,
//! an object tagged by `type`. The guest speaks first with `hello`; the host then
//! sends `exec` frames, one at a time, and the guest answers each with any number of
//! `result` and `error` frames and exactly one `done`. stdout and stderr travel
//! outside the channel (the guest's own fds 1 and 2, or stream frames where a
//! transport has a single channel).
//!
//! Everything the guest sends is untrusted: the decoder bounds frame sizes and
//! rejects malformed frames instead of trusting them.

use serde::{Deserialize, Serialize};

/// The protocol version this host speaks. A guest announcing another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest frame accepted from a guest outside a cell (its greeting, an agent's
/// replies). While a cell runs the host's loop is stricter: see [`CONTROL_FRAME_BYTES`].
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// The largest frame a cell may send that is not counted against its result budget
/// (`stream`, `error`, `done`). The driver sends at most 64 Ki characters of text per
/// `stream` frame and cuts error text below this, so an honest guest never comes near
/// it; while a cell runs, a longer frame is accepted only when it fits what is left
/// of `limits.result_bytes`, and is dropped unread otherwise.
pub const CONTROL_FRAME_BYTES: usize = 1 << 20;

/// Frames the host sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostFrame {
    /// Run a cell.
    Exec {
        /// `python` or `bash`.
        language: String,
        /// The code.
        code: String,
        /// Globals to define first.
        #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
        globals: serde_json::Map<String, serde_json::Value>,
        /// CPU budget of the cell in ms (the guest lowers its RLIMIT_CPU to match).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cpu_ms: Option<u64>,
    },
    /// Exit cleanly.
    Shutdown,
    /// Install the guard's runtime layer (audit hooks, a guarded `__import__` and
    /// builtins) before the next cell; sent before an `exec` whose cell carries a guard
    /// policy. The guest does not answer: if it cannot install the policy, or the
    /// policy differs from the one already installed, the next `exec` fails with a
    /// `GuardViolation` error. Once installed, a sandbox stays guarded.
    Guard {
        /// The resolved policy.
        policy: airlock_core::GuardPolicy,
    },
    /// Add environment variables for the code that follows (sent by hosts that start
    /// the driver before they know the sandbox's environment, e.g. a microvm restored
    /// from a snapshot). The guest answers with a `done` frame.
    Configure {
        /// Variables to set.
        #[serde(default)]
        env: std::collections::BTreeMap<String, String>,
        /// Modules to import now (not into the user's namespace), e.g. before a
        /// snapshot is taken so that every clone starts with them loaded.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        preload: Vec<String>,
    },
}

/// Frames the guest sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestFrame {
    /// The first frame: who the guest is.
    Hello {
        /// The protocol version the guest speaks.
        protocol: u32,
        /// The interpreter's version, e.g. `3.11.2`.
        #[serde(default)]
        python: String,
        /// `cpython`, ...
        #[serde(default)]
        implementation: String,
        /// The driver's pid inside the sandbox.
        #[serde(default)]
        pid: i64,
    },
    /// A rich result.
    Result {
        /// MIME type to content.
        data: std::collections::BTreeMap<String, serde_json::Value>,
        /// True for the last expression's value.
        #[serde(default)]
        main: bool,
    },
    /// An uncaught exception.
    Error {
        /// Exception type name.
        name: String,
        /// Exception message.
        value: String,
        /// Cleaned traceback.
        traceback: String,
    },
    /// Output bytes (single-channel transports such as virtio-serial or WASI hosts
    /// that multiplex streams into the channel).
    Stream {
        /// `stdout` or `stderr`.
        name: String,
        /// The text.
        text: String,
    },
    /// The interpreter has ended (sent by an agent that supervises the driver inside
    /// the sandbox, where the host cannot wait for the process itself).
    Exited {
        /// Exit status, if it exited.
        #[serde(default)]
        code: Option<i32>,
        /// Terminating signal, if it was killed.
        #[serde(default)]
        signal: Option<i32>,
        /// True when the guest kernel's OOM killer ran while it died.
        #[serde(default)]
        oom_kill: bool,
    },
    /// The cell has ended.
    Done {
        /// `ok`, `error`, `interrupted` or `signal`.
        status: String,
        /// Exit status of `sys.exit()` or of a bash cell.
        #[serde(default)]
        exit_code: Option<i64>,
        /// Signal that ended a bash cell.
        #[serde(default)]
        signal: Option<i32>,
        /// The cell's number in this sandbox.
        #[serde(default)]
        execution_count: u64,
        /// CPU used by the cell, as the guest measured it.
        #[serde(default)]
        cpu_ms: u64,
        /// The guest's peak resident memory so far.
        #[serde(default)]
        peak_memory_bytes: u64,
        /// True when the cell's exception was a `MemoryError` (or a subclass).
        #[serde(default)]
        memory_error: bool,
        /// Set when the guest did not understand the host's frame.
        #[serde(default)]
        protocol_error: Option<String>,
    },
}

/// Encodes one frame (length prefix + JSON).
pub fn encode<T: Serialize>(frame: &T) -> Vec<u8> {
    let body = serde_json::to_vec(frame).expect("frames always serialise");
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// A protocol violation by the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "guest protocol violation: {}", self.0)
    }
}

/// What [`FrameDecoder::next_decoded`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded<T> {
    /// A complete frame, and its length on the wire (without the length prefix).
    Frame(T, usize),
    /// A frame announced longer than the decoder's drop limit: its bytes are being
    /// discarded as they arrive, never buffered. Carries its announced length.
    Dropped(usize),
}

/// Incremental frame decoder: feed it bytes as they arrive, take frames out.
///
/// It never holds more than one frame's bytes (plus the last chunk pushed): frames
/// longer than [`MAX_FRAME_BYTES`] are a protocol error, and with a drop limit
/// ([`FrameDecoder::drop_above`]) frames longer than that are skipped unread.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of a dropped frame still to discard.
    skipping: usize,
    drop_above: Option<usize>,
}

impl FrameDecoder {
    /// A new, empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Frames announced longer than `max` are dropped ([`Decoded::Dropped`]) instead
    /// of buffered, whatever their size, and `max` replaces [`MAX_FRAME_BYTES`] as the
    /// largest frame buffered; `None` restores the [`MAX_FRAME_BYTES`] error.
    /// Checked each time a frame's length is read, so a lower limit applies to the
    /// next frame even if its first bytes already arrived.
    pub fn drop_above(&mut self, max: Option<usize>) {
        self.drop_above = max;
    }

    /// Appends received bytes (the rest of a dropped frame is discarded here).
    pub fn push(&mut self, mut bytes: &[u8]) {
        if self.skipping > 0 {
            let n = self.skipping.min(bytes.len());
            self.skipping -= n;
            bytes = &bytes[n..];
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet decoded.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// True while the rest of a dropped frame is being discarded.
    pub fn is_skipping(&self) -> bool {
        self.skipping > 0
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, ProtocolError> {
        match self.next_decoded()? {
            None => Ok(None),
            Some(Decoded::Frame(f, _)) => Ok(Some(f)),
            Some(Decoded::Dropped(len)) => Err(ProtocolError(format!("frame of {len} bytes exceeds the drop limit"))),
        }
    }

    /// The next complete frame or dropped frame, `Ok(None)` if more bytes are needed.
    pub fn next_decoded<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<Decoded<T>>, ProtocolError> {
        if self.skipping > 0 || self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.drop_above.unwrap_or(usize::MAX) {
            let have = self.buf.len() - 4;
            if have >= len {
                self.buf.drain(..4 + len);
            } else {
                self.buf.clear();
                self.skipping = len - have;
            }
            return Ok(Some(Decoded::Dropped(len)));
        }
        if self.drop_above.is_none() && len > MAX_FRAME_BYTES {
            return Err(ProtocolError(format!("frame of {len} bytes exceeds the {MAX_FRAME_BYTES}-byte maximum")));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let parsed =
            serde_json::from_slice(&self.buf[4..4 + len]).map_err(|e| ProtocolError(format!("malformed frame: {e}")));
        self.buf.drain(..4 + len);
        parsed.map(|f| Some(Decoded::Frame(f, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_pieces() {
        let f = GuestFrame::Error { name: "E".into(), value: "v".into(), traceback: "t".into() };
        let bytes = encode(&f);
        let mut d = FrameDecoder::new();
        for b in &bytes[..bytes.len() - 1] {
            d.push(std::slice::from_ref(b));
            assert_eq!(d.next_frame::<GuestFrame>().unwrap(), None);
        }
        d.push(&bytes[bytes.len() - 1..]);
        assert_eq!(d.next_frame::<GuestFrame>().unwrap(), Some(f));
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors() {
        let mut d = FrameDecoder::new();
        d.push(&u32::MAX.to_be_bytes());
        assert!(d.next_frame::<GuestFrame>().unwrap_err().0.contains("exceeds"));
        let mut d = FrameDecoder::new();
        d.push(&encode(&serde_json::json!({"type": "nonsense"})));
        assert!(d.next_frame::<GuestFrame>().unwrap_err().0.contains("malformed"));
    }

    #[test]
    fn frames_past_the_drop_limit_are_skipped_unbuffered() {
        let mut d = FrameDecoder::new();
        d.drop_above(Some(1000));
        let big = encode(&GuestFrame::Stream { name: "stdout".into(), text: "x".repeat(10 << 20) });
        let small = GuestFrame::Error { name: "E".into(), value: "v".into(), traceback: "t".into() };
        let mut bytes = big.clone();
        bytes.extend_from_slice(&encode(&small));
        let mut dropped = Vec::new();
        let mut frames = Vec::new();
        for chunk in bytes.chunks(64 << 10) {
            d.push(chunk);
            assert!(d.pending() <= (64 << 10), "{} bytes buffered while dropping", d.pending());
            while let Some(x) = d.next_decoded::<GuestFrame>().unwrap() {
                match x {
                    Decoded::Dropped(n) => dropped.push(n),
                    Decoded::Frame(f, _) => frames.push(f),
                }
            }
        }
        assert_eq!(dropped, [big.len() - 4]);
        assert_eq!(frames, [small], "the frame after a dropped one is read whole");
        assert!(!d.is_skipping() && d.pending() == 0);
        // A frame whose bytes all arrived at once is dropped whole too.
        let mut d = FrameDecoder::new();
        d.drop_above(Some(10));
        d.push(&big[..]);
        assert_eq!(d.next_decoded::<GuestFrame>().unwrap(), Some(Decoded::Dropped(big.len() - 4)));
        assert_eq!(d.pending(), 0);
        // Without a drop limit the 64 MiB maximum is a protocol error, as before.
        let mut d = FrameDecoder::new();
        d.push(&((MAX_FRAME_BYTES + 1) as u32).to_be_bytes());
        assert!(d.next_decoded::<GuestFrame>().is_err());
    }

    #[test]
    fn exec_frame_shape() {
        let f = HostFrame::Exec {
            language: "python".into(),
            code: "1".into(),
            globals: Default::default(),
            cpu_ms: Some(5),
        };
        let v: serde_json::Value = serde_json::from_slice(&encode(&f)[4..]).unwrap();
        assert_eq!(v, serde_json::json!({"type": "exec", "language": "python", "code": "1", "cpu_ms": 5}));
    }

    #[test]
    fn guard_frame_shape() {
        let settings = airlock_core::GuardSettings::profile(airlock_core::GuardProfile::Standard);
        let policy = settings.policy(airlock_core::NetworkPolicy::None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&encode(&HostFrame::Guard { policy })[4..]).unwrap();
        assert_eq!(v["type"], "guard");
        assert_eq!(v["policy"]["profile"], "standard");
        assert!(v["policy"]["allowed_imports"].as_array().unwrap().iter().any(|m| m == "numpy"));
        assert!(v["policy"]["denied_builtins"].as_array().unwrap().iter().any(|m| m == "open"));
    }
}

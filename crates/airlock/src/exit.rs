//! The `airlock` command's exit statuses (also listed in `airlock run --help`).

use airlock_core::{Outcome, Status};

/// The run was refused before it started (a guard policy or a limit).
pub const DENIED: i32 = 120;
/// airlock itself failed (no backend, an I/O error); nothing ran or the result is unknown.
pub const HOST_ERROR: i32 = 121;
/// The wall-clock or CPU time limit was reached.
pub const TIMEOUT: i32 = 124;
/// The memory limit was reached.
pub const MEMORY_LIMIT: i32 = 125;
/// The output limit was reached.
pub const OUTPUT_LIMIT: i32 = 126;
/// The guest was killed by a signal (e.g. seccomp's SIGSYS) or cancelled.
pub const KILLED: i32 = 137;

/// The text shown under `airlock run --help`.
pub const HELP: &str = "\
Exit status:
  0        the code ran to the end (status ok)
  1-119    the code failed (status error): its own exit status, or 1 for an uncaught exception
  2        bad command-line usage
  120      denied: refused before running (guard policy, limits)
  121      airlock failed (no usable backend, I/O error); see the message
  124      timeout: wall-clock or CPU time limit reached
  125      memory_limit: the sandbox ran out of its memory limit
  126      output_limit: stdout+stderr exceeded the output limit
  137      killed: the guest was killed by a signal (e.g. a forbidden system call) or cancelled";

/// The exit status for an outcome.
pub fn for_outcome(o: &Outcome) -> i32 {
    match o.status {
        Status::Ok => 0,
        Status::Error => match o.exit_code {
            Some(c) if (1..=119).contains(&c) => c,
            _ => 1,
        },
        Status::Timeout => TIMEOUT,
        Status::MemoryLimit => MEMORY_LIMIT,
        Status::OutputLimit => OUTPUT_LIMIT,
        Status::Killed => KILLED,
        Status::Denied => DENIED,
    }
}

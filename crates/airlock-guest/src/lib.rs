//! The guest side of airlock: the driver program that runs inside every sandbox,
//! the wire protocol it speaks, and the host-side loop that drives it.
//!
//! * [`DRIVER_SOURCE`]: the Python driver, embedded so a sandbox needs nothing but an
//!   interpreter.
//! * [`protocol`]: versioned, length-prefixed JSON frames.
//! * [`capture`]: a cell's output within its cap, streamed in whole characters.
//! * [`host`]: the handshake and the cell loop (limits, output caps, streaming).
//! * [`workspace`]: confined file access to a sandbox's workspace directory.
//! * [`launch`]: interpreter discovery, environment, channel and process supervision
//!   for backends whose guest is a host process.

pub mod capture;
pub mod host;
pub mod launch;
pub mod protocol;
pub mod workspace;

/// The guest driver's Python source (CPython 3.11+, standard library only).
pub const DRIVER_SOURCE: &str = include_str!("../driver/driver.py");

/// Command-line arguments that make `python3` run the driver with the channel on `fd`:
/// isolated mode (no user site, no `PYTHON*` variables), unbuffered output, no
/// bytecode writes.
pub fn driver_args(fd: i32) -> Vec<String> {
    vec!["-I".into(), "-u".into(), "-B".into(), "-c".into(), DRIVER_SOURCE.into(), fd.to_string()]
}

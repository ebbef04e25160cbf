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

/// The zygote's Python source: a trusted interpreter that imports a template's modules
/// and forks one sandbox per request (used by the `jail` backend's fast start).
pub const ZYGOTE_SOURCE: &str = include_str!("../driver/zygote.py");

/// A bootstrap that runs the zygote (the next argument) with the driver's source after
/// it; the control socket must be on fd 3.
const ZYGOTE_BOOTSTRAP: &str =
    "import sys;exec(compile(sys.argv[1],'<airlock-zygote>','exec'),{'__name__':'__main__'})";

/// Command-line arguments that make `python3` run the zygote (see [`ZYGOTE_SOURCE`]).
pub fn zygote_args() -> Vec<String> {
    vec![
        "-I".into(),
        "-u".into(),
        "-B".into(),
        "-c".into(),
        ZYGOTE_BOOTSTRAP.into(),
        ZYGOTE_SOURCE.into(),
        DRIVER_SOURCE.into(),
    ]
}

/// The file name the driver's code is compiled under; tracebacks drop frames with it.
pub const DRIVER_FILENAME: &str = "<airlock-driver>";

/// A one-line bootstrap that compiles the driver (passed as the next argument) under
/// [`DRIVER_FILENAME`] and runs it as `__main__`.
const SOURCE_BOOTSTRAP: &str =
    "import sys;exec(compile(sys.argv[1],'<airlock-driver>','exec'),{'__name__':'__main__'})";

/// A bootstrap that reads the driver's marshalled code object from the channel (fd 3)
/// as one length-prefixed frame and runs it: no compile at start-up (~5-10 ms saved).
const BYTECODE_BOOTSTRAP: &str = "import os,marshal\n\
def r(n):\n b=b''\n while len(b)<n:\n  c=os.read(3,n-len(b))\n  if not c:raise SystemExit(70)\n  b+=c\n return b\n\
exec(marshal.loads(r(int.from_bytes(r(4),'big'))),{'__name__':'__main__'})";

/// Command-line arguments that make `python3` run the driver from source with the
/// channel on `fd`: isolated mode (no user site, no `PYTHON*` variables), unbuffered
/// output, no bytecode writes.
pub fn driver_args(fd: i32) -> Vec<String> {
    vec![
        "-I".into(),
        "-u".into(),
        "-B".into(),
        "-c".into(),
        SOURCE_BOOTSTRAP.into(),
        DRIVER_SOURCE.into(),
        fd.to_string(),
    ]
}

/// Like [`driver_args`], but the driver's code object arrives over the channel (see
/// [`launch::DriverBoot`]); the channel must be fd 3.
pub fn driver_args_bytecode() -> Vec<String> {
    vec!["-I".into(), "-u".into(), "-B".into(), "-c".into(), BYTECODE_BOOTSTRAP.into(), "3".into()]
}

//! Airlock's guest agent for the `microvm` backend.
//!
//! Inside the virtual machine the agent is PID 1. It brings the guest up (kernel
//! modules, the read-only root image, tmpfs for `/workspace` and `/tmp`), starts the
//! same guest driver every other backend runs (`airlock-guest/driver/driver.py`) as
//! an unprivileged user, and multiplexes everything over the one virtio-serial port
//! the host gives it:
//!
//! * host → guest: the driver's own frames (`exec`, `shutdown`) are forwarded to
//!   the driver; agent requests ([`AgentRequest`]: attach, interrupt, file
//!   operations) are handled by the agent itself;
//! * guest → host: the driver's frames are forwarded as they are, its stdout and
//!   stderr (which the agent owns as pipes, so output of C code and child processes
//!   is captured too) travel as `stream` frames, and the driver's death is reported
//!   with an `exited` frame.
//!
//! [`serve`] is the multiplexer; it also runs on an ordinary host (over a socket
//! instead of a virtio port), which is how it is tested without a VM.

pub mod frames;
pub mod serve;

pub use frames::{AgentReply, AgentRequest, GuestLimits, WireError};
pub use serve::{ServeConfig, serve};

/// The name of the virtio-serial port the agent talks on (`virtserialport,name=...`).
pub const PORT_NAME: &str = "airlock.0";

/// The uid and gid guest code runs as inside the VM.
pub const GUEST_UID: u32 = 1000;

/// Where the workspace is mounted inside the VM.
pub const GUEST_WORKSPACE: &str = "/workspace";

/// Where the image keeps matplotlib's prebuilt font cache (copied to a writable
/// directory at boot so matplotlib does not rebuild it on first import).
pub const IMAGE_MPL_CACHE: &str = "/usr/share/airlock/mplcache";

/// The writable matplotlib configuration directory inside the VM.
pub const GUEST_MPL_DIR: &str = "/run/airlock-mpl";

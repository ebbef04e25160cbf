//! Airlock's contract: the one request/result model that crosses every layer.
//!
//! * [`ExecRequest`] describes a run: language, code, files, environment, [`Limits`],
//!   [`NetworkPolicy`] and the chosen [`BackendKind`].
//! * [`Outcome`] describes what happened: a precise [`Status`], captured output,
//!   rich results, a clean error, and resource [`Usage`].
//! * [`Backend`] and [`Sandbox`] are what every isolation mechanism implements.
//!
//! This crate has no operating-system code; it is shared by the CLI, the server,
//! the SDK's schema and every backend.

pub mod backend;
pub mod error;
pub mod guard;
pub mod outcome;
pub mod paths;
pub mod request;
pub mod units;

pub use backend::{
    Backend, BackendKind, Cell, Event, Factory, FileEntry, Isolation, Probe, Recipe, Sandbox, SandboxSpec, run_once,
};
pub use error::Error;
pub use guard::{GuardFinding, GuardPolicy, GuardProfile, GuardSettings};
pub use outcome::{ErrorInfo, Outcome, OutputFile, ResultBundle, Status, Usage};
pub use request::{CellLimits, CellRequest, ExecRequest, FileInput, Language, Limits, NetworkPolicy, SandboxTerms};

/// A new, time-ordered identifier with a readable prefix, e.g. `exe_0192...`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

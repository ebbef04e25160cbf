//! One module per subcommand.

pub mod bench;
pub mod bench_server;
pub mod doctor;
pub mod keys;
pub mod mcp;
pub mod run;
pub mod serve;
pub mod setup;

use airlock_core::units::{parse_duration_ms, parse_size};
use airlock_core::{BackendKind, GuardProfile, Language, NetworkPolicy};

/// clap value parser for sizes like `128M`.
pub fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string().trim_start_matches("invalid request: ").to_string())
}

/// clap value parser for durations like `1`, `0.5`, `250ms`.
pub fn duration_arg(s: &str) -> Result<u64, String> {
    parse_duration_ms(s).map_err(|e| e.to_string().trim_start_matches("invalid request: ").to_string())
}

/// clap value parser for backend names.
pub fn backend_arg(s: &str) -> Result<BackendKind, String> {
    s.parse().map_err(|e: airlock_core::Error| e.to_string().trim_start_matches("invalid request: ").to_string())
}

/// clap value parser for languages.
pub fn language_arg(s: &str) -> Result<Language, String> {
    s.parse().map_err(|e: airlock_core::Error| e.to_string().trim_start_matches("invalid request: ").to_string())
}

/// clap value parser for guard profiles.
pub fn guard_arg(s: &str) -> Result<GuardProfile, String> {
    s.parse().map_err(|e: airlock_core::Error| e.to_string().trim_start_matches("invalid request: ").to_string())
}

/// clap value parser for network policies.
pub fn network_arg(s: &str) -> Result<NetworkPolicy, String> {
    match s {
        "none" => Ok(NetworkPolicy::None),
        "host" => Ok(NetworkPolicy::Host),
        other => Err(format!("unknown network policy '{other}': use 'none' or 'host'")),
    }
}

//! The network namespace.
//!
//! With [`NetworkPolicy::None`] (the default) the sandbox gets a network namespace of
//! its own whose only interface is loopback, brought up so that programs talking to
//! themselves over 127.0.0.1 work. Nothing routes out of it, the host's loopback
//! listeners are in another namespace, and abstract Unix sockets are scoped to the
//! namespace too.
//!
//! With [`NetworkPolicy::Host`] the sandbox shares the host's network namespace: it can
//! reach the internet, the host's 127.0.0.1 services and (unless Landlock ABI 6 scopes
//! them away) the host's abstract Unix sockets. Use it only for trusted code; every
//! outcome carries a warning saying so.

use airlock_core::NetworkPolicy;

use crate::sys::{Sys, SysResult};

/// The `clone` flag for a policy: a new network namespace unless the host's is shared.
pub fn clone_flag(policy: NetworkPolicy) -> i32 {
    match policy {
        NetworkPolicy::None => libc::CLONE_NEWNET,
        NetworkPolicy::Host => 0,
    }
}

/// Brings `lo` up in the sandbox's own namespace.
pub fn loopback_up<S: Sys>(sys: &mut S) -> SysResult<()> {
    sys.loopback_up()
}

/// The warning attached to outcomes of sandboxes on the host network.
pub const HOST_NETWORK_WARNING: &str = "network 'host': the sandbox shared the host's network namespace (internet, the host's 127.0.0.1 services and its abstract Unix sockets were reachable)";

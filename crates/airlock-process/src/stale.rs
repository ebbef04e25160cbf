//! Finding and removing what `process` sandboxes left behind when the airlock process
//! that owned them died without cleaning up (`kill -9`, a crash).
//!
//! Every sandbox directory is named `airlock-process-<sandbox id>-XXXXXX` under the
//! temporary directory, and its owner holds an exclusive `flock` on it for the
//! sandbox's whole life. The kernel drops the lock when the owner dies, however it
//! dies. So a directory whose lock can be taken has no live owner: the guest processes
//! whose `HOME` is that directory (and every process of their sessions) are killed and
//! the directory is removed. Directories still being set up (no `.tmp` inside yet) are
//! left alone unless they are old, so a sandbox created at the same moment by another
//! airlock is never touched.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use airlock_core::Error;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The prefix of every sandbox directory (followed by the sandbox id).
pub const DIR_PREFIX: &str = "airlock-process-";

/// A half-made directory older than this is treated as abandoned.
const SETUP_GRACE: Duration = Duration::from_secs(60);

/// The prefix of a sandbox's directory name: [`DIR_PREFIX`], the id (only its
/// `[A-Za-z0-9_]` characters, at most 48), and a dash.
pub fn dir_prefix(sandbox_id: &str) -> String {
    let id: String = sandbox_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(48).collect();
    format!("{DIR_PREFIX}{}-", if id.is_empty() { "sbx" } else { &id })
}

/// Takes the owner's lock on a sandbox directory, waiting for it if a cleanup holds it
/// for a moment. The lock lives as long as the returned value.
pub fn lock_dir(dir: &Path) -> Result<Flock<File>, Error> {
    let f = File::open(dir).map_err(|e| Error::io(format!("opening {}", dir.display()), e))?;
    Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::host(format!("locking {}: {}", dir.display(), e.desc())))
}

/// Removes stale sandboxes under `tmp` (normally `std::env::temp_dir()`). Returns one
/// line per sandbox removed.
pub fn cleanup(tmp: &Path) -> Result<Vec<String>, Error> {
    let mut report = Vec::new();
    let entries = match std::fs::read_dir(tmp) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(Error::io(format!("listing {}", tmp.display()), e)),
    };
    let me = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // Only directories made by this code: the id always starts with `sbx_`.
        if !name.starts_with(DIR_PREFIX) || !name[DIR_PREFIX.len()..].starts_with("sbx_") {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if !meta.is_dir() || meta.uid() != me {
            continue;
        }
        let Ok(f) = File::open(&path) else { continue };
        let lock = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, Errno::EWOULDBLOCK)) => continue, // its owner is alive
            Err((_, e)) => {
                tracing::warn!("cannot lock {}: {}", path.display(), e.desc());
                continue;
            }
        };
        let ready = path.join(".tmp").exists();
        let age = meta.modified().ok().and_then(|m| SystemTime::now().duration_since(m).ok()).unwrap_or_default();
        if !ready && age < SETUP_GRACE {
            continue; // being created right now by a live airlock
        }
        let killed = kill_guests(&path);
        remove_tree(&path);
        drop(lock);
        let what = if path.exists() { "could not fully remove" } else { "removed" };
        report.push(format!("process: killed {killed} stale guest process(es) and {what} {}", path.display()));
    }
    Ok(report)
}

/// Kills every process whose environment says `HOME=<dir>` and every process of their
/// sessions; returns how many were signalled.
fn kill_guests(dir: &Path) -> usize {
    let mut needle = b"HOME=".to_vec();
    needle.extend_from_slice(dir.as_os_str().as_bytes());
    let mut sessions = BTreeSet::new();
    for (pid, stat) in processes() {
        if stat.state == 'Z' {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if env.split(|b| *b == 0).any(|kv| kv == needle.as_slice()) {
            sessions.insert(stat.session);
        }
    }
    let mut killed = 0;
    // Repeat: a process may fork while its session is being killed.
    for _ in 0..50 {
        let victims: Vec<i32> = processes()
            .into_iter()
            .filter(|(pid, s)| s.state != 'Z' && sessions.contains(&s.session) && *pid != std::process::id() as i32)
            .map(|(pid, _)| pid)
            .collect();
        if victims.is_empty() {
            break;
        }
        for pid in victims {
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    killed
}

/// The fields of `/proc/PID/stat` this module needs.
struct Stat {
    state: char,
    session: i32,
}

/// Every process visible in `/proc`, with its state and session id.
fn processes() -> Vec<(i32, Stat)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The command name may contain spaces and parentheses: parse after the last ')'.
        let Some(rest) = text.rfind(')').map(|i| &text[i + 1..]) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // rest = state ppid pgrp session ...
        let (Some(state), Some(session)) =
            (fields.first().and_then(|s| s.chars().next()), fields.get(3).and_then(|s| s.parse().ok()))
        else {
            continue;
        };
        if session > 0 {
            out.push((pid, Stat { state, session }));
        }
    }
    out
}

/// Removes a directory tree, making directories writable first if the guest made them
/// read-only.
fn remove_tree(path: &Path) {
    if std::fs::remove_dir_all(path).is_ok() {
        return;
    }
    fn open_up(p: &PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let Ok(m) = std::fs::symlink_metadata(p) else { return };
        if !m.is_dir() {
            return;
        }
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                open_up(&e.path());
            }
        }
    }
    open_up(&path.to_path_buf());
    if let Err(e) = std::fs::remove_dir_all(path) {
        tracing::warn!("removing stale sandbox directory {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_keeps_only_safe_characters() {
        assert_eq!(dir_prefix("sbx_0123abc"), "airlock-process-sbx_0123abc-");
        assert_eq!(dir_prefix("../../etc"), "airlock-process-etc-");
        assert_eq!(dir_prefix("///"), "airlock-process-sbx-");
    }

    #[test]
    fn locked_directories_are_left_alone_and_unlocked_ones_removed() {
        let root = tempfile::tempdir().unwrap();
        let live = root.path().join(format!("{}x", dir_prefix("sbx_live")));
        let dead = root.path().join(format!("{}x", dir_prefix("sbx_dead")));
        let foreign = root.path().join("airlock-process-abcdef");
        for d in [&live, &dead, &foreign] {
            std::fs::create_dir_all(d.join(".tmp")).unwrap();
        }
        let _held = lock_dir(&live).unwrap();
        let report = cleanup(root.path()).unwrap();
        assert_eq!(report.len(), 1, "{report:?}");
        assert!(live.exists(), "a directory whose owner holds the lock was removed");
        assert!(!dead.exists(), "an unlocked directory was left behind");
        assert!(foreign.exists(), "a directory not made by this code was removed");
    }

    #[test]
    fn directories_being_set_up_are_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join(format!("{}x", dir_prefix("sbx_fresh")));
        std::fs::create_dir_all(&fresh).unwrap();
        assert!(cleanup(root.path()).unwrap().is_empty());
        assert!(fresh.exists());
    }
}

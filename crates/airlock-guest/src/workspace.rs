//! Confined access to a sandbox's workspace from the host.
//!
//! Every path is resolved relative to a directory file descriptor, never by name from
//! the host's root: `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`, or, on kernels without `openat2`, a walk
//! that opens one component at a time with `O_NOFOLLOW`. A symlink planted by the
//! guest therefore fails the operation instead of redirecting it (no TOCTOU window:
//! nothing is checked and then re-opened by name). Reads refuse anything but regular
//! files (a FIFO cannot block the host) and are size-capped.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use airlock_core::paths::WorkspacePath;
use airlock_core::units::format_size;
use airlock_core::{Error, FileEntry};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

/// The most entries a listing returns.
pub const MAX_LIST_ENTRIES: usize = 10_000;
/// The deepest a listing descends.
const MAX_LIST_DEPTH: usize = 32;

/// A workspace directory, held open by a file descriptor.
#[derive(Debug)]
pub struct Workspace {
    dir: OwnedFd,
    owner: Option<(Uid, Gid)>,
}

fn map_errno(e: Errno, path: &WorkspacePath, what: &str) -> Error {
    match e {
        Errno::ENOENT => Error::NotFound(format!("'{path}' does not exist in the workspace")),
        Errno::ELOOP | Errno::EXDEV => Error::invalid(format!(
            "'{path}' goes through a symbolic link or mount point; airlock does not follow links in the workspace"
        )),
        Errno::ENOTDIR => Error::invalid(format!("a parent of '{path}' is not a directory")),
        Errno::EISDIR => Error::invalid(format!("'{path}' is a directory")),
        Errno::ENOSPC | Errno::EDQUOT => Error::TooLarge(format!("the workspace is full while writing '{path}'")),
        Errno::EFBIG => Error::TooLarge(format!("'{path}' exceeds the sandbox's file size limit")),
        Errno::ENOTEMPTY => Error::invalid(format!("directory '{path}' is not empty")),
        other => Error::host(format!("{what} '{path}': {}", other.desc())),
    }
}

impl Workspace {
    /// Opens a workspace directory on the host by path (the directory itself must not
    /// be a symlink).
    pub fn open(path: &Path) -> Result<Self, Error> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::host(format!("opening workspace {}: {}", path.display(), e.desc())))?;
        Ok(Workspace { dir: fd, owner: None })
    }

    /// Wraps an already-open directory descriptor (e.g. one passed out of a sandbox).
    pub fn from_fd(dir: OwnedFd) -> Self {
        Workspace { dir, owner: None }
    }

    /// Files and directories the host creates are given to this owner (the sandbox's
    /// unprivileged user), so the guest can modify what it is given.
    pub fn with_owner(mut self, uid: u32, gid: u32) -> Self {
        self.owner = Some((Uid::from_raw(uid), Gid::from_raw(gid)));
        self
    }

    /// The directory descriptor.
    pub fn fd(&self) -> &OwnedFd {
        &self.dir
    }

    /// Opens `rel` (a relative path without `..`) beneath `base` without following any symlink.
    fn open_beneath(base: &OwnedFd, rel: &str, flags: OFlag, mode: Mode) -> Result<OwnedFd, Errno> {
        let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW).mode(mode).resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
        match openat2(base.as_fd(), rel, how) {
            Err(Errno::ENOSYS) | Err(Errno::EPERM) => {}
            other => return other,
        }
        // Fallback: one component at a time, never following a link.
        let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        let Some((last, parents)) = comps.split_last() else {
            return openat(base.as_fd(), ".", flags | OFlag::O_CLOEXEC, mode);
        };
        let mut cur: Option<OwnedFd> = None;
        for c in parents {
            let at = cur.as_ref().unwrap_or(base);
            let next = openat(
                at.as_fd(),
                *c,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            cur = Some(next);
        }
        let at = cur.as_ref().unwrap_or(base);
        openat(at.as_fd(), *last, flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW, mode)
    }

    fn chown(&self, fd: &OwnedFd) {
        if let Some((u, g)) = self.owner {
            let _ = fchown(fd.as_fd(), Some(u), Some(g));
        }
    }

    /// Opens (creating as needed) the directory `comps` beneath the workspace.
    fn ensure_dir(&self, comps: &[&str], path: &WorkspacePath) -> Result<OwnedFd, Error> {
        let mut cur = Self::open_beneath(&self.dir, ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
            .map_err(|e| map_errno(e, path, "opening workspace"))?;
        for c in comps {
            match mkdirat(cur.as_fd(), *c, Mode::from_bits_truncate(0o755)) {
                Ok(()) => {
                    let fd = Self::open_beneath(&cur, c, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
                        .map_err(|e| map_errno(e, path, "opening directory"))?;
                    self.chown(&fd);
                    cur = fd;
                }
                Err(Errno::EEXIST) => {
                    cur = Self::open_beneath(&cur, c, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
                        .map_err(|e| map_errno(e, path, "opening directory"))?;
                }
                Err(e) => return Err(map_errno(e, path, "creating directory")),
            }
        }
        Ok(cur)
    }

    /// Writes `data` to `path`, creating parent directories; refuses more than `max_bytes`.
    pub fn write(&self, path: &WorkspacePath, data: &[u8], max_bytes: u64) -> Result<(), Error> {
        if data.len() as u64 > max_bytes {
            return Err(Error::TooLarge(format!(
                "'{path}' is {} but the limit is {} (limits.file_bytes)",
                format_size(data.len() as u64),
                format_size(max_bytes)
            )));
        }
        let (parents, name) = path.split_last().ok_or_else(|| Error::invalid("cannot write to the workspace root"))?;
        let dir = self.ensure_dir(&parents, path)?;
        let fd = Self::open_beneath(
            &dir,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NONBLOCK,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(|e| map_errno(e, path, "creating"))?;
        let st = fstat(fd.as_fd()).map_err(|e| map_errno(e, path, "inspecting"))?;
        if !is_regular(&st) {
            return Err(Error::invalid(format!("'{path}' exists and is not a regular file")));
        }
        self.chown(&fd);
        let mut f = File::from(fd);
        f.write_all(data).map_err(|e| match e.raw_os_error() {
            Some(n) => map_errno(Errno::from_raw(n), path, "writing"),
            None => Error::io(format!("writing '{path}'"), e),
        })
    }

    /// Reads `path`, refusing non-regular files and files over `max_bytes`.
    pub fn read(&self, path: &WorkspacePath, max_bytes: u64) -> Result<Vec<u8>, Error> {
        let fd = Self::open_beneath(&self.dir, path.as_str(), OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty())
            .map_err(|e| map_errno(e, path, "opening"))?;
        let st = fstat(fd.as_fd()).map_err(|e| map_errno(e, path, "inspecting"))?;
        if !is_regular(&st) {
            return Err(Error::invalid(format!("'{path}' is not a regular file")));
        }
        if st.st_size as u64 > max_bytes {
            return Err(Error::TooLarge(format!(
                "'{path}' is {}, more than the {} allowed",
                format_size(st.st_size as u64),
                format_size(max_bytes)
            )));
        }
        let mut out = Vec::with_capacity(st.st_size as usize);
        File::from(fd)
            .take(max_bytes + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::io(format!("reading '{path}'"), e))?;
        if out.len() as u64 > max_bytes {
            return Err(Error::TooLarge(format!("'{path}' grew beyond {} while being read", format_size(max_bytes))));
        }
        Ok(out)
    }

    /// Lists `dir` recursively (symlinks are listed, not followed), at most
    /// [`MAX_LIST_ENTRIES`] entries.
    pub fn list(&self, dir: &WorkspacePath) -> Result<Vec<FileEntry>, Error> {
        let start = Self::open_beneath(
            &self.dir,
            if dir.is_root() { "." } else { dir.as_str() },
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .map_err(|e| map_errno(e, dir, "opening directory"))?;
        let mut out = Vec::new();
        let prefix = if dir.is_root() { String::new() } else { format!("{dir}/") };
        list_into(start, &prefix, 0, &mut out)?;
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Removes a file, a symlink or an empty directory.
    pub fn remove(&self, path: &WorkspacePath) -> Result<(), Error> {
        let (parents, name) = path.split_last().ok_or_else(|| Error::invalid("cannot remove the workspace root"))?;
        let parent = parents.join("/");
        let dir = Self::open_beneath(
            &self.dir,
            if parent.is_empty() { "." } else { &parent },
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .map_err(|e| map_errno(e, path, "opening directory"))?;
        match unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(()),
            Err(Errno::EISDIR) => {
                unlinkat(dir.as_fd(), name, UnlinkatFlags::RemoveDir).map_err(|e| map_errno(e, path, "removing"))
            }
            Err(e) => Err(map_errno(e, path, "removing")),
        }
    }
}

fn is_regular(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG
}

fn list_into(dir: OwnedFd, prefix: &str, depth: usize, out: &mut Vec<FileEntry>) -> Result<(), Error> {
    let dup = dir.try_clone().map_err(|e| Error::io("listing workspace", e))?;
    let mut d = nix::dir::Dir::from_fd(dup).map_err(|e| Error::host(format!("listing workspace: {}", e.desc())))?;
    let mut subdirs = Vec::new();
    for entry in d.iter() {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        if out.len() >= MAX_LIST_ENTRIES {
            return Ok(());
        }
        let Ok(st) = fstatat(dir.as_fd(), name.as_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        let path = format!("{prefix}{name}");
        let is_dir = kind == SFlag::S_IFDIR;
        out.push(FileEntry { path: path.clone(), size: if is_dir { 0 } else { st.st_size as u64 }, is_dir });
        if is_dir && depth < MAX_LIST_DEPTH {
            subdirs.push((name, path));
        }
    }
    for (name, path) in subdirs {
        if let Ok(fd) = openat(
            dir.as_fd(),
            name.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            list_into(fd, &format!("{path}/"), depth + 1, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> WorkspacePath {
        WorkspacePath::parse(s).unwrap()
    }

    #[test]
    fn write_read_list_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspace::open(tmp.path()).unwrap();
        ws.write(&p("a/b/c.txt"), b"hello", 100).unwrap();
        assert_eq!(ws.read(&p("a/b/c.txt"), 100).unwrap(), b"hello");
        let names: Vec<_> =
            ws.list(&WorkspacePath::parse_dir(".").unwrap()).unwrap().into_iter().map(|e| e.path).collect();
        assert_eq!(names, ["a", "a/b", "a/b/c.txt"]);
        ws.remove(&p("a/b/c.txt")).unwrap();
        assert!(matches!(ws.read(&p("a/b/c.txt"), 100), Err(Error::NotFound(_))));
        ws.remove(&p("a/b")).unwrap();
    }

    #[test]
    fn size_caps() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspace::open(tmp.path()).unwrap();
        assert!(matches!(ws.write(&p("big"), &[0u8; 10], 5), Err(Error::TooLarge(_))));
        ws.write(&p("big"), &[0u8; 10], 10).unwrap();
        assert!(matches!(ws.read(&p("big"), 9), Err(Error::TooLarge(_))));
    }

    #[test]
    fn symlinks_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"host secret").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), tmp.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("dirlink")).unwrap();
        let ws = Workspace::open(tmp.path()).unwrap();
        let e = ws.read(&p("link"), 100).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(ws.read(&p("dirlink/secret"), 100).is_err());
        // Writing through a link must not touch the target.
        assert!(ws.write(&p("link"), b"pwned", 100).is_err());
        assert!(ws.write(&p("dirlink/new"), b"pwned", 100).is_err());
        assert_eq!(std::fs::read(outside.path().join("secret")).unwrap(), b"host secret");
        assert!(!outside.path().join("new").exists());
        // Listing shows the link but does not descend into it.
        let names: Vec<_> =
            ws.list(&WorkspacePath::parse_dir("").unwrap()).unwrap().into_iter().map(|e| e.path).collect();
        assert_eq!(names, ["dirlink", "link"]);
    }

    #[test]
    fn fifo_does_not_block_reads() {
        let tmp = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&tmp.path().join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        let ws = Workspace::open(tmp.path()).unwrap();
        let e = ws.read(&p("fifo"), 100).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}

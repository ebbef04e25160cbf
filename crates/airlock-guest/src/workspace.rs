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
use std::io::Read;
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

    /// Opens `rel` (a relative path without `..`) beneath `base` without following any
    /// symlink. Allocates nothing for paths under 1 KiB (nix copies such paths to the
    /// stack), so a [`PreparedWrite`] can use it in a forked child.
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
        let mut comps = rel.split('/').filter(|c| !c.is_empty()).peekable();
        if comps.peek().is_none() {
            return openat(base.as_fd(), ".", flags | OFlag::O_CLOEXEC, mode);
        }
        let mut cur: Option<OwnedFd> = None;
        while let Some(c) = comps.next() {
            let at = cur.as_ref().unwrap_or(base);
            if comps.peek().is_none() {
                return openat(at.as_fd(), c, flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW, mode);
            }
            let next = openat(
                at.as_fd(),
                c,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            cur = Some(next);
        }
        unreachable!("the loop returns at the last component")
    }

    fn chown(&self, fd: &OwnedFd) {
        if let Some((u, g)) = self.owner {
            let _ = fchown(fd.as_fd(), Some(u), Some(g));
        }
    }

    /// Writes `data` to `path`, creating parent directories; refuses more than `max_bytes`.
    /// Whatever is written is charged to the memory of the calling process; see
    /// [`Workspace::prepare_write`] to write from another one.
    pub fn write(&self, path: &WorkspacePath, data: &[u8], max_bytes: u64) -> Result<(), Error> {
        let w = self.prepare_write(path, data, max_bytes)?;
        let fd = w.open().map_err(|f| w.error(f))?;
        w.write_to(&fd).map_err(|f| {
            self.discard(path, &fd);
            w.error(f)
        })
    }

    /// Checks a write of `data` to `path` (size, a file name) and splits the path, so
    /// that [`PreparedWrite::open`] and [`PreparedWrite::write_to`] can then run
    /// without allocating: in a child forked from a multi-threaded process, e.g. one
    /// placed in the sandbox's memory cgroup so that the file's pages are charged to
    /// the sandbox rather than to airlock.
    pub fn prepare_write<'a>(
        &'a self,
        path: &'a WorkspacePath,
        data: &'a [u8],
        max_bytes: u64,
    ) -> Result<PreparedWrite<'a>, Error> {
        if data.len() as u64 > max_bytes {
            return Err(Error::TooLarge(format!(
                "'{path}' is {} but the limit is {} (limits.file_bytes)",
                format_size(data.len() as u64),
                format_size(max_bytes)
            )));
        }
        let (parents, name) = path.split_last().ok_or_else(|| Error::invalid("cannot write to the workspace root"))?;
        Ok(PreparedWrite { ws: self, path, parents, name, data })
    }

    /// The length of the regular file at `path` and the bytes of memory or disk it
    /// holds (what replacing it frees); zeros when there is none.
    pub fn file_sizes(&self, path: &WorkspacePath) -> (u64, u64) {
        Self::open_beneath(&self.dir, path.as_str(), OFlag::O_PATH, Mode::empty())
            .and_then(|fd| fstat(fd.as_fd()))
            .ok()
            .filter(is_regular)
            .map_or((0, 0), |st| (st.st_size as u64, st.st_blocks as u64 * 512))
    }

    /// Removes the file `fd` was opened from, if `path` still names it (after a failed
    /// write: its pages are freed at once by the truncation, the name goes too).
    pub fn discard(&self, path: &WorkspacePath, fd: &OwnedFd) {
        let _ = nix::unistd::ftruncate(fd.as_fd(), 0);
        let Some((parents, name)) = path.split_last() else { return };
        let parent = parents.join("/");
        let Ok(dir) = Self::open_beneath(
            &self.dir,
            if parent.is_empty() { "." } else { &parent },
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        ) else {
            return;
        };
        let (Ok(named), Ok(held)) =
            (fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW), fstat(fd.as_fd()))
        else {
            return;
        };
        if (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino) {
            let _ = unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir);
        }
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

    /// The total size of every regular file in the workspace, however many there are
    /// and however deep (unlike [`Workspace::list`], which stops at
    /// [`MAX_LIST_ENTRIES`]): what a cap on the workspace's size is checked against.
    pub fn usage(&self) -> u64 {
        let mut total = 0u64;
        let mut pending = vec![String::new()];
        while let Some(rel) = pending.pop() {
            let Ok(fd) = Self::open_beneath(
                &self.dir,
                if rel.is_empty() { "." } else { &rel },
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Mode::empty(),
            ) else {
                continue;
            };
            let Ok(dup) = fd.try_clone() else { continue };
            let Ok(mut d) = nix::dir::Dir::from_fd(dup) else { continue };
            for entry in d.iter().flatten() {
                let name = entry.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                let Ok(st) = fstatat(fd.as_fd(), entry.file_name(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) else {
                    continue;
                };
                match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
                    SFlag::S_IFREG => total = total.saturating_add(st.st_size as u64),
                    SFlag::S_IFDIR => {
                        let name = String::from_utf8_lossy(name);
                        pending.push(if rel.is_empty() { name.into_owned() } else { format!("{rel}/{name}") });
                    }
                    _ => {}
                }
            }
        }
        total
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

/// Which part of a workspace write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStep {
    /// Opening or creating a parent directory.
    Directory,
    /// Opening or creating the file itself.
    Open,
    /// The file exists and is not a regular file.
    NotRegular,
    /// Writing the bytes.
    Write,
}

/// A failed step of a [`PreparedWrite`] and its `errno`.
pub type WriteFailure = (WriteStep, Errno);

/// A checked workspace write whose steps allocate nothing (see
/// [`Workspace::prepare_write`]); [`PreparedWrite::error`] turns a failure into the
/// caller's error afterwards.
#[derive(Debug)]
pub struct PreparedWrite<'a> {
    ws: &'a Workspace,
    path: &'a WorkspacePath,
    parents: Vec<&'a str>,
    name: &'a str,
    data: &'a [u8],
}

impl PreparedWrite<'_> {
    /// Creates the parent directories (owned by the workspace's owner) and opens the
    /// file, created or truncated, refusing anything but a regular file.
    pub fn open(&self) -> Result<OwnedFd, WriteFailure> {
        let ws = self.ws;
        let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
        let mut cur =
            Workspace::open_beneath(&ws.dir, ".", dir_flags, Mode::empty()).map_err(|e| (WriteStep::Directory, e))?;
        for c in &self.parents {
            let created = match mkdirat(cur.as_fd(), *c, Mode::from_bits_truncate(0o755)) {
                Ok(()) => true,
                Err(Errno::EEXIST) => false,
                Err(e) => return Err((WriteStep::Directory, e)),
            };
            cur = Workspace::open_beneath(&cur, c, dir_flags, Mode::empty()).map_err(|e| (WriteStep::Directory, e))?;
            if created {
                ws.chown(&cur);
            }
        }
        let fd = Workspace::open_beneath(
            &cur,
            self.name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NONBLOCK,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(|e| (WriteStep::Open, e))?;
        let st = fstat(fd.as_fd()).map_err(|e| (WriteStep::Open, e))?;
        if !is_regular(&st) {
            return Err((WriteStep::NotRegular, Errno::EINVAL));
        }
        ws.chown(&fd);
        Ok(fd)
    }

    /// Writes the bytes to `fd` (from [`PreparedWrite::open`]).
    pub fn write_to(&self, fd: &OwnedFd) -> Result<(), WriteFailure> {
        let mut rest = self.data;
        while !rest.is_empty() {
            match nix::unistd::write(fd, rest) {
                Ok(0) => return Err((WriteStep::Write, Errno::ENOSPC)),
                Ok(n) => rest = &rest[n..],
                Err(Errno::EINTR) => {}
                Err(e) => return Err((WriteStep::Write, e)),
            }
        }
        Ok(())
    }

    /// The error to report for a failed step.
    pub fn error(&self, (step, errno): WriteFailure) -> Error {
        let path = self.path;
        match step {
            WriteStep::NotRegular => Error::invalid(format!("'{path}' exists and is not a regular file")),
            WriteStep::Directory => map_errno(errno, path, "creating directory"),
            WriteStep::Open => map_errno(errno, path, "creating"),
            WriteStep::Write => map_errno(errno, path, "writing"),
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
    fn usage_counts_every_file_however_many_and_however_deep() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspace::open(tmp.path()).unwrap();
        let deep = (0..40).map(|i| format!("d{i}")).collect::<Vec<_>>().join("/");
        ws.write(&p(&format!("{deep}/f")), &[0u8; 100], 1000).unwrap();
        for i in 0..MAX_LIST_ENTRIES + 10 {
            std::fs::write(tmp.path().join(format!("e{i}")), b"").unwrap();
        }
        ws.write(&p("z"), &[0u8; 7], 1000).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", tmp.path().join("link")).unwrap();
        assert_eq!(ws.usage(), 107);
        assert_eq!(ws.file_sizes(&p("link")), (0, 0), "a link is not followed");
        assert_eq!(ws.file_sizes(&p("missing")), (0, 0));
        assert_eq!(ws.file_sizes(&p("z")).0, 7);
        assert!(ws.file_sizes(&p("z")).1 >= 7);
    }

    #[test]
    fn a_failed_write_leaves_nothing_and_discard_spares_a_replaced_name() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspace::open(tmp.path()).unwrap();
        // A write that fails half-way (RLIMIT_FSIZE-like: a full disk is hard to fake)
        // is simulated by discarding after open.
        let path = p("dir/f");
        let w = ws.prepare_write(&path, b"abc", 10).unwrap();
        let fd = w.open().unwrap();
        w.write_to(&fd).unwrap();
        ws.discard(&path, &fd);
        assert!(!tmp.path().join("dir/f").exists());
        // If the name now holds another file, only the descriptor's file is emptied.
        let fd = w.open().unwrap();
        w.write_to(&fd).unwrap();
        std::fs::remove_file(tmp.path().join("dir/f")).unwrap();
        std::fs::write(tmp.path().join("dir/f"), b"someone else's").unwrap();
        ws.discard(&path, &fd);
        assert_eq!(std::fs::read(tmp.path().join("dir/f")).unwrap(), b"someone else's");
        assert_eq!(nix::sys::stat::fstat(fd.as_fd()).unwrap().st_size, 0);
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

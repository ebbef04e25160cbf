//! A live `jail` sandbox: the driver keeps running between cells, and the workspace is
//! reached through the directory descriptor the sandbox handed over at start-up.

use std::sync::Arc;
use std::time::Duration;

use airlock_core::backend::{Canceller, EventSink};
use airlock_core::paths::WorkspacePath;
use airlock_core::{BackendKind, Cell, Error, FileEntry, Outcome, Sandbox};
use airlock_guest::host::{Guest, Supervisor};
use airlock_guest::workspace::Workspace;

use crate::cgroup::{Cgroup, CgroupOps};
use crate::supervisor::JailSupervisor;

/// Removes a sandbox's cgroup when dropped (after killing anything left in it).
#[derive(Debug)]
pub struct CgroupGuard(
    pub Option<Arc<Cgroup>>,
    /// Bytes taken off the group's memory cap for small files airlock wrote itself
    /// (see [`crate::upload`]).
    pub(crate) u64,
);

impl CgroupGuard {
    /// Guards `group` (or nothing).
    pub fn new(group: Option<Arc<Cgroup>>) -> Self {
        CgroupGuard(group, 0)
    }

    /// Kills what is left and removes the group; idempotent.
    pub fn release(&mut self) -> Result<(), Error> {
        let Some(g) = self.0.take() else { return Ok(()) };
        let mut result = Ok(());
        if !g.pids().is_empty()
            && let Err(e) = g.kill_all()
        {
            result = Err(Error::host(format!("killing the sandbox's remaining processes: {e}")));
        }
        if let Err(e) = g.remove() {
            tracing::warn!("{e}; `cleanup_stale` will remove it once this process is gone");
            result = result.and(Err(Error::host(format!("removing the sandbox's cgroup: {e}"))));
        }
        result
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// Makes the calling thread act as the sandbox's owner for file access (root mode):
/// a file system mounted in the sandbox's user namespace refuses files owned by ids it
/// cannot map, and the host then has exactly the guest's permissions, no more.
pub(crate) struct ActAs {
    uid: libc::c_long,
    gid: libc::c_long,
}

impl ActAs {
    pub(crate) fn new(ids: Option<(u32, u32)>) -> Option<ActAs> {
        let (uid, gid) = ids?;
        // SAFETY: setfsgid/setfsuid change only this thread's file-system ids and
        // return the previous ones; they are restored in Drop.
        unsafe {
            let gid = libc::syscall(libc::SYS_setfsgid, gid);
            let uid = libc::syscall(libc::SYS_setfsuid, uid);
            Some(ActAs { uid, gid })
        }
    }
}

impl Drop for ActAs {
    fn drop(&mut self) {
        // SAFETY: restores this thread's previous file-system ids.
        unsafe {
            libc::syscall(libc::SYS_setfsuid, self.uid);
            libc::syscall(libc::SYS_setfsgid, self.gid);
        }
    }
}

/// A live `jail` sandbox.
pub struct JailSandbox {
    pub(crate) id: String,
    pub(crate) guest: Guest<JailSupervisor>,
    pub(crate) workspace: Workspace,
    pub(crate) file_bytes: u64,
    /// Host ids to act as when touching the workspace (root mode only).
    pub(crate) fs_ids: Option<(u32, u32)>,
    pub(crate) cgroup: CgroupGuard,
    /// What must outlive this sandbox: for a zygote's child, the zygote (killing it
    /// would kill the child), released after the child is torn down.
    pub(crate) _keepalive: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl JailSandbox {
    fn teardown(&mut self) -> Result<(), Error> {
        let t0 = std::time::Instant::now();
        // Nothing inside needs a graceful exit (the whole file system goes with it), so
        // the driver — the PID namespace's init, taking every process with it — is killed.
        let sup = self.guest.supervisor();
        sup.kill();
        let _ = sup.wait(Duration::from_secs(5));
        self.guest.terminate();
        let t_exit = t0.elapsed();
        let r = self.cgroup.release();
        tracing::debug!(sandbox = %self.id, "jail teardown: exit {:?}, cgroup removal {:?}", t_exit, t0.elapsed() - t_exit);
        r
    }

    /// The driver's pid on the host (tests).
    pub fn host_pid(&mut self) -> i32 {
        self.guest.supervisor().pid()
    }
}

impl Sandbox for JailSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Jail
    }

    fn execute(&mut self, cell: &Cell, events: &mut EventSink<'_>) -> Result<Outcome, Error> {
        self.guest.execute(cell, events)
    }

    /// Written by a process in the sandbox's memory cgroup, so that the file is charged
    /// to the sandbox, or, if small, by airlock with the sandbox's cap lowered by as
    /// much (see [`crate::upload`]); without a memory cgroup (rootless on a host without
    /// delegation), by airlock itself, bounded by the tmpfs size alone.
    fn write_file(&mut self, path: &WorkspacePath, data: &[u8]) -> Result<(), Error> {
        if let Some(g) = self.cgroup.0.clone()
            && let Some(memory) = g.memory_state()
        {
            // A small file is written at once, its cost taken off the group's cap.
            if let Some(cost) = crate::upload::take_for_small_file(&g, &memory, path, data.len(), self.cgroup.1) {
                self.cgroup.1 += cost;
                let _as = ActAs::new(self.fs_ids);
                return self.workspace.write(path, data, self.file_bytes);
            }
            let g = &g;
            let target = crate::upload::Target { cgroup: g, memory, fs_ids: self.fs_ids };
            let r = crate::upload::write(&self.workspace, path, data, self.file_bytes, &target, true);
            if r.is_err() && self.guest.is_alive() {
                // A writer the OOM killer took is not the guest's death.
                self.guest.supervisor().forget_oom_kills();
            }
            return r;
        }
        let _as = ActAs::new(self.fs_ids);
        self.workspace.write(path, data, self.file_bytes)
    }

    fn read_file(&mut self, path: &WorkspacePath, max_bytes: u64) -> Result<Vec<u8>, Error> {
        let _as = ActAs::new(self.fs_ids);
        self.workspace.read(path, max_bytes)
    }

    fn list_files(&mut self, dir: &WorkspacePath) -> Result<Vec<FileEntry>, Error> {
        let _as = ActAs::new(self.fs_ids);
        self.workspace.list(dir)
    }

    fn remove_file(&mut self, path: &WorkspacePath) -> Result<(), Error> {
        let _as = ActAs::new(self.fs_ids);
        self.workspace.remove(path)
    }

    fn is_alive(&self) -> bool {
        self.guest.is_alive()
    }

    fn canceller(&self) -> Option<Canceller> {
        Some(self.guest.canceller())
    }

    fn destroy(mut self: Box<Self>) -> Result<(), Error> {
        self.teardown()
    }
}

impl Drop for JailSandbox {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

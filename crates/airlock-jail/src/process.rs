//! The guest process itself: its file descriptors, session, signals and the final
//! `execve`. Everything is prepared in the parent; the child only makes system calls.

use std::ffi::{CStr, CString};

use crate::sys::{Errno, Sys, SysResult};

/// The program the child executes, with its argument and environment arrays built in
/// advance (building them in the child would allocate).
pub struct ExecImage {
    /// The interpreter's path inside the sandbox.
    pub path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
}

// SAFETY: the raw pointers point into the CStrings owned by the same value (heap
// buffers that never move or change), so the value can move between threads whole.
unsafe impl Send for ExecImage {}
// SAFETY: as above; nothing mutates through the pointers.
unsafe impl Sync for ExecImage {}

impl std::fmt::Debug for ExecImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecImage")
            .field("path", &self.path)
            .field("argv", &self.argv.len())
            .field("envp", &self.envp.len())
            .finish()
    }
}

/// Turns a string into a C string, refusing interior NUL bytes.
pub fn cstring(s: impl Into<Vec<u8>>, what: &str) -> Result<CString, airlock_core::Error> {
    CString::new(s).map_err(|_| airlock_core::Error::invalid(format!("{what} contains a NUL byte")))
}

impl ExecImage {
    /// An image running `path` with `argv` (argv[0] included) and `env`.
    pub fn new(path: &str, argv: &[String], env: &[(String, String)]) -> Result<Self, airlock_core::Error> {
        let path = cstring(path, "the interpreter path")?;
        let argv: Vec<CString> =
            argv.iter().map(|a| cstring(a.as_str(), "an interpreter argument")).collect::<Result<_, _>>()?;
        let envp: Vec<CString> = env
            .iter()
            .map(|(k, v)| cstring(format!("{k}={v}"), "an environment variable"))
            .collect::<Result<_, _>>()?;
        let argv_ptrs = argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        let envp_ptrs = envp.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        Ok(ExecImage { path, argv, envp, argv_ptrs, envp_ptrs })
    }

    /// The NULL-terminated argument vector.
    pub fn argv_ptrs(&self) -> *const *const libc::c_char {
        self.argv_ptrs.as_ptr()
    }

    /// The NULL-terminated environment.
    pub fn envp_ptrs(&self) -> *const *const libc::c_char {
        self.envp_ptrs.as_ptr()
    }

    /// The arguments (for descriptions and tests).
    pub fn args(&self) -> impl Iterator<Item = &CStr> {
        self.argv.iter().map(|a| a.as_c_str())
    }

    /// The environment (for tests).
    pub fn env(&self) -> impl Iterator<Item = &CStr> {
        self.envp.iter().map(|a| a.as_c_str())
    }
}

/// The guest's standard descriptors: `/dev/null` as stdin, the stdout and stderr pipes,
/// and the driver's channel as fd 3. Nothing else survives `execve`.
#[derive(Debug)]
pub struct Stdio {
    /// Opened inside the new root as fd 0.
    pub stdin_path: CString,
    /// Becomes fd 1.
    pub stdout: i32,
    /// Becomes fd 2.
    pub stderr: i32,
    /// Becomes fd 3.
    pub channel: i32,
}

/// The lowest descriptor number the parent gives the child's ends, so the final
/// `dup2` into 0..=3 can never overwrite one of them.
pub const HIGH_FD: i32 = 10;

impl Stdio {
    /// Installs the four descriptors and marks every other one close-on-exec.
    pub fn apply<S: Sys>(&self, sys: &mut S) -> SysResult<()> {
        let stdin = sys.open(&self.stdin_path, libc::O_RDONLY, 0)?;
        // Copies above HIGH_FD first, so no source is overwritten by an earlier dup2.
        let mut tmp = [0i32; 4];
        for (slot, fd) in tmp.iter_mut().zip([stdin, self.stdout, self.stderr, self.channel]) {
            *slot = sys.dup_above(fd, HIGH_FD)?;
        }
        for (target, fd) in tmp.iter().enumerate() {
            sys.dup2(*fd, target as i32)?;
        }
        if stdin > 3 {
            sys.close(stdin);
        }
        sys.cloexec_from(4)
    }
}

/// Runs `execve`; only a failure returns.
pub fn exec<S: Sys>(sys: &mut S, image: &ExecImage) -> Errno {
    sys.execve(image)
}

//! Workspace-relative paths, checked before any file is touched.

use crate::error::Error;

/// The mount point of the workspace inside sandboxes that have a filesystem of their own.
pub const WORKSPACE_MOUNT: &str = "/workspace";

/// A path inside the sandbox workspace: relative, normalised, without `..`.
///
/// This is only the lexical half of confinement; backends still open files relative to
/// a directory handle without following symlinks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkspacePath(String);

impl WorkspacePath {
    /// Parses a user-supplied path. `/workspace/x` and `x` name the same file; `.`
    /// components are dropped; `..`, other absolute paths, NUL bytes and empty paths are
    /// refused with a message saying why.
    pub fn parse(raw: &str) -> Result<Self, Error> {
        Self::parse_inner(raw, false)
    }

    /// Like [`WorkspacePath::parse`] but accepts the workspace root itself (`""`, `.` or `/workspace`),
    /// for listing directories.
    pub fn parse_dir(raw: &str) -> Result<Self, Error> {
        Self::parse_inner(raw, true)
    }

    fn parse_inner(raw: &str, allow_root: bool) -> Result<Self, Error> {
        if raw.contains('\0') {
            return Err(Error::invalid(format!("path {raw:?} contains a NUL byte")));
        }
        let rel = if raw == WORKSPACE_MOUNT {
            ""
        } else if let Some(rest) = raw.strip_prefix("/workspace/") {
            rest
        } else if raw.starts_with('/') {
            return Err(Error::invalid(format!(
                "path '{raw}' is absolute and outside the workspace; use a path relative to /workspace"
            )));
        } else {
            raw
        };
        let mut parts = Vec::new();
        for c in rel.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    return Err(Error::invalid(format!(
                        "path '{raw}' contains '..'; paths must stay inside the workspace"
                    )));
                }
                c => parts.push(c),
            }
        }
        if parts.is_empty() && !allow_root {
            return Err(Error::invalid(format!("path '{raw}' names no file; give a file name")));
        }
        if parts.iter().map(|p| p.len()).any(|l| l > 255) || rel.len() > 4096 {
            return Err(Error::invalid(format!("path '{raw}' is too long")));
        }
        Ok(WorkspacePath(parts.join("/")))
    }

    /// The normalised relative path (`""` for the workspace root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for the workspace root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path's components, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }

    /// The parent directory's components and the final name (`None` for the root).
    pub fn split_last(&self) -> Option<(Vec<&str>, &str)> {
        let mut comps: Vec<&str> = self.components().collect();
        let last = comps.pop()?;
        Some((comps, last))
    }
}

impl std::fmt::Display for WorkspacePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_accepts_workspace_prefix() {
        assert_eq!(WorkspacePath::parse("a/./b//c").unwrap().as_str(), "a/b/c");
        assert_eq!(WorkspacePath::parse("/workspace/out.png").unwrap().as_str(), "out.png");
        assert!(WorkspacePath::parse_dir("/workspace").unwrap().is_root());
        assert!(WorkspacePath::parse_dir(".").unwrap().is_root());
    }

    #[test]
    fn refuses_escapes() {
        for bad in ["../x", "a/../../x", "/etc/passwd", "", ".", "a\0b", "/workspacex/y"] {
            assert!(WorkspacePath::parse(bad).is_err(), "{bad:?} accepted");
        }
        let e = WorkspacePath::parse("/etc/shadow").unwrap_err().to_string();
        assert!(e.contains("outside the workspace"), "{e}");
    }

    #[test]
    fn split_last_gives_parent_and_name() {
        let p = WorkspacePath::parse("a/b/c.txt").unwrap();
        assert_eq!(p.split_last().unwrap(), (vec!["a", "b"], "c.txt"));
    }
}

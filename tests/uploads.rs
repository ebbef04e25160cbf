//! Files the host copies into a workspace (the files API, a request's `files`) are
//! bounded per sandbox, whoever writes them, and charged to the sandbox where the
//! backend has a memory limit of its own:
//!
//! * `jail` (cold and forked from a zygote): the bytes are charged to the sandbox's
//!   memory cgroup, not to airlock, and what its `memory_bytes` cannot hold is refused
//!   with a `TooLarge` error naming the limit;
//! * `wasm`: the workspace is a folder on the host's disk; files copied in count
//!   against `file_bytes` for the whole workspace, as the guest's own writes do;
//! * `microvm`: the workspace is a tmpfs inside the guest, in the VM's memory.
//!
//! Each test prints "skipped: <reason>" where its backend cannot run.

use std::path::{Path, PathBuf};

use airlock_core::paths::WorkspacePath;
use airlock_core::{BackendKind, Cell, Error, Language, Limits, Recipe, Sandbox, SandboxSpec, Status};
use airlock_tests::{Session, assert_status, backend};

const MIB: u64 = 1 << 20;

fn p(s: &str) -> WorkspacePath {
    WorkspacePath::parse(s).unwrap()
}

/// The memory cgroup directory of sandbox `id` (jail names its groups
/// `<pid>-<start>-<sandbox id>` under an `airlock` parent).
fn memory_group(id: &str) -> Option<PathBuf> {
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let path = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) || path.components().count() > 12 {
                continue;
            }
            let ours = d.file_name().is_some_and(|n| n == "airlock") && e.file_name().to_string_lossy().ends_with(id);
            if ours && (path.join("memory.usage_in_bytes").exists() || path.join("memory.current").exists()) {
                return Some(path);
            }
            stack.push(path);
        }
    }
    None
}

fn usage(group: &Path) -> u64 {
    std::fs::read_to_string(group.join("memory.usage_in_bytes"))
        .or_else(|_| std::fs::read_to_string(group.join("memory.current")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn limit(group: &Path) -> u64 {
    std::fs::read_to_string(group.join("memory.limit_in_bytes"))
        .or_else(|_| std::fs::read_to_string(group.join("memory.max")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// tmpfs pages charged to this process's own memory cgroup, not counting its
/// children's (cgroup v1's local `shmem`; `None` elsewhere).
fn own_shmem() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))?;
    let stat = std::fs::read_to_string(format!("/sys/fs/cgroup/memory{path}/memory.stat")).ok()?;
    stat.lines().find_map(|l| l.strip_prefix("shmem ")?.trim().parse().ok())
}

/// Uploads 16 MiB files into a sandbox of 96 MiB (with a 1 GiB workspace) until one is
/// refused: the first is charged to the sandbox's cgroup, the refusal names
/// `limits.memory_bytes`, the sandbox keeps working, and removing a file makes room.
fn jail_uploads_are_charged_and_bounded_by_memory(make: &dyn Fn(&SandboxSpec) -> Box<dyn Sandbox>) {
    let limits = jail_limits();
    let mut sb = make(&SandboxSpec::new(limits));
    let cell = |sb: &mut Box<dyn Sandbox>, code: &str| {
        sb.execute(&Cell::new(Language::Python, code, &limits), &mut |_| {}).expect("execute")
    };
    let id = sb.id().to_string();
    let Some(group) = memory_group(&id) else {
        eprintln!("skipped: sandbox {id} has no memory cgroup here (rootless without delegation)");
        return;
    };
    // Small files are written by airlock at once, and the sandbox's cap shrinks by
    // what they hold (pages, and 4 KiB per path component), so the two together stay
    // within memory_bytes.
    let cap = limit(&group);
    for i in 0..3 {
        sb.write_file(&p(&format!("small/{i}")), b"a,b\n1,2\n").unwrap();
    }
    assert_eq!(limit(&group), cap - 3 * (4096 + 2 * 4096), "small files are not counted against the sandbox");
    let chunk = vec![7u8; 16 << 20];
    let (before, own_before) = (usage(&group), own_shmem());
    sb.write_file(&p("up/0"), &chunk).unwrap();
    let after = usage(&group);
    // (The kernel charges in batches, so the counter may trail by a few pages.)
    assert!(after >= before + 15 * MIB, "the upload was not charged to the sandbox: {before} -> {after}");
    if let (Some(a), Some(b)) = (own_before, own_shmem()) {
        assert!(b < a + 8 * MIB, "the upload was charged to airlock's own cgroup: shmem {a} -> {b}");
    }
    let mut accepted = 1u64;
    let refused = loop {
        match sb.write_file(&p(&format!("up/{accepted}")), &chunk) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted * 16 <= 96, "{} MiB of uploads accepted into a sandbox of 96 MiB", accepted * 16);
    };
    assert!(matches!(refused, Error::TooLarge(_)), "{refused}");
    assert!(refused.to_string().contains("limits.memory_bytes"), "{refused}");
    assert!(usage(&group) <= 96 * MIB);
    let o = cell(&mut sb, "import os\nsorted(os.listdir('up'))");
    assert_status(&o, Status::Ok);
    let names: Vec<String> = (0..accepted).map(|i| format!("'{i}'")).collect();
    assert_eq!(o.text().map(str::to_string), Some(format!("[{}]", names.join(", "))), "the refused file was kept");
    sb.remove_file(&p("up/0")).unwrap();
    sb.write_file(&p("up/again"), &chunk).expect("room made by removing a file");
    // (Reading it back would not fit: the sandbox's memory is full of files.)
    let o = cell(&mut sb, "import os\nos.path.getsize('up/again')");
    assert_eq!(o.text(), Some((16u64 << 20).to_string().as_str()));
}

fn jail_limits() -> Limits {
    Limits { memory_bytes: 96 * MIB, file_bytes: 1024 * MIB, ..Limits::default() }
}

#[test]
fn jail_uploads_are_charged_to_the_sandbox_and_bounded_by_its_memory() {
    let Some(b) = backend(BackendKind::Jail) else { return };
    jail_uploads_are_charged_and_bounded_by_memory(&|spec| b.create(spec).expect("create"));
}

/// The same on a sandbox forked from a zygote (one of its own, whose template has these
/// limits: a zygote's children cannot have a larger `file_bytes` than it has).
#[test]
fn jail_zygote_uploads_are_charged_to_the_sandbox_and_bounded_by_its_memory() {
    let Some(b) = backend(BackendKind::Jail) else { return };
    let recipe = Recipe { name: "uploads".into(), modules: vec![], optional_modules: true, limits: jail_limits() };
    let Some(factory) = b.factory(&recipe).expect("the zygote starts") else {
        eprintln!("skipped: the jail backend has no zygote here (AIRLOCK_JAIL_ZYGOTE=0)");
        return;
    };
    jail_uploads_are_charged_and_bounded_by_memory(&|spec| factory.create(spec).expect("fork"));
}

#[test]
fn wasm_uploads_count_against_the_workspace_size() {
    let Some(b) = backend(BackendKind::Wasm) else { return };
    let mut s = Session::new(&*b, Limits { file_bytes: 8 * MIB, ..Limits::default() });
    let chunk = vec![1u8; 3 << 20];
    s.sandbox().write_file(&p("a"), &chunk).unwrap();
    s.sandbox().write_file(&p("d/b"), &chunk).unwrap();
    let e = s.sandbox().write_file(&p("c"), &chunk).unwrap_err();
    assert!(matches!(e, Error::TooLarge(_)) && e.to_string().contains("limits.file_bytes"), "{e}");
    s.sandbox().write_file(&p("a"), &chunk).expect("replacing a file frees its bytes");
    // The guest's own writes see the files copied in.
    let o = s.cell("open('g', 'wb').write(b'x' * (3 << 20))");
    assert_status(&o, Status::Error);
    s.sandbox().remove_file(&p("d/b")).unwrap();
    let o = s.cell("open('g', 'wb').write(b'x' * (3 << 20))");
    assert_status(&o, Status::Ok);
}

/// On `microvm` the workspace is a tmpfs inside the guest: files copied in are held in
/// the VM's memory, never in airlock's, and one the guest cannot hold is refused while
/// the session lives on (a file used to travel in one frame, held by the guest encoded
/// and decoded at once: a 16 MiB upload into a 160 MiB VM ended the session).
#[test]
fn microvm_uploads_live_in_the_guest_and_are_refused_when_it_is_full() {
    let Some(b) = backend(BackendKind::Microvm) else { return };
    let limits = Limits { memory_bytes: 160 * MIB, file_bytes: 1024 * MIB, ..Limits::default() };
    let mut s = Session::new(&*b, limits);
    let chunk = vec![7u8; 16 << 20];
    let own_before = own_shmem();
    let mut accepted = 0u64;
    let refused = loop {
        match s.sandbox().write_file(&p(&format!("up/{accepted}")), &chunk) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted * 16 <= 160, "{} MiB of uploads accepted into a VM of 160 MiB", accepted * 16);
    };
    assert!(matches!(refused, Error::TooLarge(_)), "{refused}");
    assert!(refused.to_string().contains("limits.memory_bytes"), "{refused}");
    assert!(accepted >= 1, "a 16 MiB file does not fit in a 160 MiB VM: {refused}");
    eprintln!("microvm: {accepted} files of 16 MiB accepted, then: {refused}");
    if let (Some(a), Some(b)) = (own_before, own_shmem()) {
        assert!(b < a + 8 * MIB, "the uploads were held by airlock: shmem {a} -> {b}");
    }
    let o = s.cell("import os\nlen(os.listdir('up'))");
    assert_status(&o, Status::Ok);
    assert_eq!(o.text().map(str::to_string), Some(accepted.to_string()));
}

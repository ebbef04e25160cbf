//! `airlock-vm-agent`: PID 1 of an airlock microvm, or (with `--serve`) the same
//! multiplexer over an inherited socket for tests on an ordinary host.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if std::process::id() == 1 {
        init::main();
    }
    match args.get(1).map(String::as_str) {
        Some("--serve") => std::process::exit(serve_on_host(&args[2..])),
        _ => {
            eprintln!(
                "airlock-vm-agent is the init of an airlock microvm; for tests run it as\n  airlock-vm-agent --serve FD WORKSPACE PYTHON"
            );
            std::process::exit(2);
        }
    }
}

/// `--serve FD WORKSPACE PYTHON`: serve on an inherited socket, as the current user.
fn serve_on_host(args: &[String]) -> i32 {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (Some(fd), Some(ws), Some(py)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("usage: airlock-vm-agent --serve FD WORKSPACE PYTHON");
        return 2;
    };
    let Ok(fd) = fd.parse::<i32>() else {
        eprintln!("FD must be a number");
        return 2;
    };
    // SAFETY: the caller hands us this descriptor for our exclusive use.
    let port = unsafe { OwnedFd::from_raw_fd(fd) };
    let cfg = airlock_vm_agent::ServeConfig {
        python: ws_path(py),
        workspace: ws_path(ws),
        tmp: std::env::temp_dir().to_string_lossy().into_owned(),
        run_as: None,
        mpl_config: None,
        preload: Vec::new(),
        extra_env: Default::default(),
        in_vm: false,
    };
    match airlock_vm_agent::serve(port, &cfg) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("airlock-vm-agent: {e}");
            1
        }
    }
}

fn ws_path(s: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(s)
}

mod init;

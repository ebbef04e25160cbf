//! CPU time and wall time of cold `jail` runs (create, `print(1)`, destroy) next to a
//! bare `python3 -c 'print(1)'`, in one process. CPU time is what the work costs;
//! wall time also counts waiting for a CPU, which dominates on a loaded machine.
//!
//! `cargo run --release -p airlock-jail --example coldstart [N]` (settings from the
//! environment, e.g. `AIRLOCK_JAIL_CPU_CORES=0`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airlock_core::{ExecRequest, Status, run_once};
use airlock_jail::{JailBackend, JailConfig};

fn cpu_ms() -> f64 {
    let t = |who| {
        // SAFETY: getrusage writes into a zeroed, live struct.
        let ru = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            libc::getrusage(who, &mut ru);
            ru
        };
        let tv = |v: libc::timeval| v.tv_sec as f64 * 1000.0 + v.tv_usec as f64 / 1000.0;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    t(libc::RUSAGE_SELF) + t(libc::RUSAGE_CHILDREN)
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn measure(n: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let c0 = cpu_ms();
    let mut walls = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f();
        walls.push(t.elapsed());
    }
    (median(walls), (cpu_ms() - c0) / n as f64)
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(30);
    let python = airlock_guest::launch::default_python();
    let jail = JailBackend::new(JailConfig::from_env(python.clone()));
    let req = ExecRequest::python("print(1)");
    let (bw, bc) = measure(n, || {
        let st = Command::new(&python).args(["-c", "print(1)"]).stdout(Stdio::null()).status().expect("python runs");
        assert!(st.success());
    });
    let (jw, jc) = measure(n, || {
        let o = run_once(&jail, &req, None, &mut |_| {}).expect("jail runs");
        assert_eq!(o.status, Status::Ok);
    });
    // The same driver without any isolation: what the driver itself costs.
    let process = airlock_process::ProcessBackend::new(python.clone());
    let (pw, pc) = measure(n, || {
        let o = run_once(&process, &req, None, &mut |_| {}).expect("process runs");
        assert_eq!(o.status, Status::Ok);
    });
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    println!("bare python3 -c: wall median {bw:.1} ms, CPU {bc:.1} ms per run");
    println!("jail cold:       wall median {jw:.1} ms, CPU {jc:.1} ms per run");
    println!("process cold:    wall median {pw:.1} ms, CPU {pc:.1} ms per run");
    println!("ratio: wall {:.2}x, CPU {:.2}x", jw / bw, jc / bc);
}

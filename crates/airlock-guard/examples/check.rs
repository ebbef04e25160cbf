//! Checks Python files against a guard profile and prints the findings:
//! `cargo run -p airlock-guard --example check -- [standard|strict] FILE...`

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let profile = match args.first().map(|a| a.parse::<airlock_core::GuardProfile>()) {
        Some(Ok(p)) => {
            args.remove(0);
            p
        }
        _ => airlock_core::GuardProfile::Standard,
    };
    let policy = airlock_core::GuardSettings::profile(profile).policy(airlock_core::NetworkPolicy::None);
    let Some(policy) = policy else {
        eprintln!("profile 'off' checks nothing");
        std::process::exit(2);
    };
    let mut denied = false;
    for path in args {
        let source = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{path}: {e}");
                std::process::exit(2);
            }
        };
        let report = airlock_guard::check_timed(&source, &policy);
        println!("{path}: {} finding(s) in {:?}", report.findings.len(), report.elapsed);
        for f in &report.findings {
            println!("  {f}");
        }
        denied |= !report.is_clean();
    }
    std::process::exit(i32::from(denied));
}

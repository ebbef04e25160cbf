//! Splits the static check's time into parsing and walking (a development aid;
//! `airlock bench -w guard` is the measurement airlock quotes):
//! `cargo run --release -p airlock-guard --example timing [FILE.py]` (default: the
//! generated 1,000-line program of `airlock bench -w guard`)

use std::time::Instant;

fn median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
}

fn main() {
    let program = match std::env::args().nth(1) {
        Some(path) => std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")),
        None => airlock_guard::sample_program(1000),
    };
    let policy = airlock_core::GuardSettings::profile(airlock_core::GuardProfile::Standard)
        .policy(airlock_core::NetworkPolicy::None)
        .expect("standard has a policy");
    let n = 300;
    let (mut parse, mut check) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        std::hint::black_box(ruff_python_parser::parse_module(std::hint::black_box(&program)).is_ok());
        parse.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        std::hint::black_box(airlock_guard::check(std::hint::black_box(&program), &policy));
        check.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (pm, pmin) = median(parse);
    let (cm, cmin) = median(check);
    println!(
        "{} lines, {} bytes: parse median {pm:.0} µs (min {pmin:.0}), check (parse + walk) median {cm:.0} µs (min {cmin:.0})",
        program.lines().count(),
        program.len(),
    );
}

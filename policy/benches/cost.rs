//! What one full decision costs in allocations and instructions, counted rather than
//! timed: on a shared 2-core host wall-clock numbers move by ±25 % with the neighbours'
//! load, counts do not.
//!
//! `cost <zaif|binance> <N>` runs N full decisions (the same pipeline as the `decision`
//! bench, see `support`) after a warm-up and prints the allocations per decision. For
//! instructions, count two runs and divide the difference, so set-up cancels out:
//!
//! ```text
//! bin=$(ls -t target/release/deps/cost-* | grep -v '\.d$' | head -1)
//! for n in 20000 220000; do perf stat -x, -e instructions:u $bin zaif $n; done
//! # (instructions(220000) - instructions(20000)) / 200000 = instructions per decision
//! ```
//!
//! The allocator is mimalloc, as in the gateway, behind a counting wrapper
//! (`stats_alloc`), whose six atomic counters add a few instructions per allocation.

// A bench target's `main` and helpers need no docs.
#![allow(missing_docs)]

mod support;

use std::net::IpAddr;

use keyguard_policy::dialect::DialectKind;
use stats_alloc::{Region, StatsAlloc};

#[global_allocator]
static GLOBAL: StatsAlloc<mimalloc::MiMalloc> = StatsAlloc::new(mimalloc::MiMalloc);

/// Decisions run before counting, so lazily built state (key caches, store entries)
/// is not charged to the measured ones.
const WARM_UP: u64 = 1_000;

fn main() {
    // `cargo bench` passes `--bench` (and criterion-style flags): ignored, and with no
    // dialect named both run a short smoke round.
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let kinds = match args.next().as_deref() {
        Some("zaif") => vec![DialectKind::Zaif],
        Some("binance") => vec![DialectKind::Binance],
        None => vec![DialectKind::Zaif, DialectKind::Binance],
        Some(_) => usage(),
    };
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1_000);
    for kind in kinds {
        run(kind, n);
    }
}

fn run(kind: DialectKind, n: u64) {
    let stores = support::stores();
    let req = support::signed(kind, "ak-0");
    let key = support::key("kg_0", "ak-0", "acct-0");
    let client: IpAddr = "192.0.2.10".parse().unwrap();
    for _ in 0..WARM_UP {
        support::decide(&req, &stores, &key, client);
    }
    let region = Region::new(&GLOBAL);
    for _ in 0..n {
        support::decide(&req, &stores, &key, client);
    }
    let change = region.change();
    let per = |x: usize| x as f64 / n.max(1) as f64;
    println!(
        "{} decisions: {n}; per decision: {:.2} allocations, {:.2} reallocations, {:.1} bytes allocated",
        kind.as_str(),
        per(change.allocations),
        per(change.reallocations),
        per(change.bytes_allocated),
    );
}

fn usage() -> ! {
    eprintln!("usage: cost [zaif|binance] [N]");
    std::process::exit(2)
}

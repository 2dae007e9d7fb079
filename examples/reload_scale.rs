//! Reload cost at scale: writes N tenant files (default 100,000), then measures what a reload
//! costs — reading and validating every file, building the new snapshot from the previous one —
//! and the peak memory the rebuild adds on top of the serving snapshot.
//!
//!   cargo run --release --example reload_scale -- [TENANTS]

use std::path::Path;
use std::time::Instant;

use porteiro::config;
use porteiro::snapshot::Snapshot;

#[global_allocator]
static GLOBAL: porteiro::alloc::Mimalloc = porteiro::alloc::Mimalloc;

fn main() {
    let tenants: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    write_config(dir.path(), tenants);
    let main_file = dir.path().join("porteiro.toml");

    // As the running proxy does: parsed files are cached from one reload to the next, and
    // each reload is checked against the last good configuration, which stays in memory.
    let mut cache = config::ParseCache::default();
    let t = Instant::now();
    let mut last_good = config::load_isolating(&main_file, &mut cache, None).expect("valid config");
    let first = Snapshot::build(&last_good, 1, None);
    println!(
        "initial load+build: {:?} ({} hosts)",
        t.elapsed(),
        first.counts().hosts
    );
    let serving_rss = rss_kib("VmRSS");
    reset_peak();

    // One tenant changes, as in a real edit; everything is re-read and rebuilt.
    std::fs::write(
        dir.path().join("tenants.d/t00000.toml"),
        tenant(0, "10.9.9.9:80"),
    )
    .expect("write");
    let mut times = Vec::new();
    let mut previous = first;
    for generation in 2..=6 {
        let t = Instant::now();
        let cfg =
            config::load_isolating(&main_file, &mut cache, Some(&last_good)).expect("valid config");
        let load = t.elapsed();
        let next = Snapshot::build(&cfg, generation, Some(&previous));
        let total = t.elapsed();
        times.push((load, total));
        previous = next;
        last_good = cfg;
    }
    let peak = rss_kib("VmHWM");
    let t = Instant::now();
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir.path().join("tenants.d")).expect("dir") {
        bytes += std::fs::read_to_string(entry.expect("entry").path())
            .expect("read")
            .len();
    }
    println!(
        "of which reading the files alone: {:?} ({} KiB)",
        t.elapsed(),
        bytes / 1024
    );
    for (i, (load, total)) in times.iter().enumerate() {
        println!(
            "reload {}: read+validate {:?}, total to new snapshot {:?}",
            i + 1,
            load,
            total
        );
    }
    let mut totals: Vec<_> = times.iter().map(|t| t.1).collect();
    totals.sort();
    println!("median reload: {:?}", totals[totals.len() / 2]);
    println!(
        "serving RSS {} MiB; peak RSS during reloads {} MiB; extra {} MiB",
        serving_rss / 1024,
        peak / 1024,
        peak.saturating_sub(serving_rss) / 1024
    );
}

fn write_config(dir: &Path, tenants: usize) {
    std::fs::create_dir_all(dir.join("tenants.d")).expect("mkdir");
    std::fs::write(
        dir.join("porteiro.toml"),
        "[server]\nlisten = [\"127.0.0.1:18300\"]\n",
    )
    .expect("write");
    for i in 0..tenants {
        let backend = format!("10.{}.{}.{}:8080", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        std::fs::write(
            dir.join(format!("tenants.d/t{i:05}.toml")),
            tenant(i, &backend),
        )
        .expect("write");
    }
}

fn tenant(i: usize, backend: &str) -> String {
    format!(
        "id = \"t{i}\"\nhosts = [\"t{i}.example.com\", \"*.t{i}.example.net\"]\n[pools.web]\nbackends = [\"{backend}\"]\n\
         health = {{ tcp = true, interval = \"10s\" }}\n"
    )
}

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Resets VmHWM to the current RSS (Linux: write 5 to clear_refs).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

//! One row of `make bench`'s table: a figure, its value, the baseline it is measured against
//! in the same run, the ratio, the target and whether it is met.
//!
//! Each benchmark appends its rows, one JSON object per line, to the file named by
//! `KAFFLOW_BENCH_ROWS` (default `target/bench-rows.jsonl`); `benches/report.rs`, run last by
//! `make bench`, prints them as one table and writes it into `docs/benchmarks.md`.

#![allow(dead_code)] // each benchmark uses what it needs

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;

/// What a figure must reach.
pub enum Target {
    /// value / baseline at least this.
    RatioAtLeast(f64),
    /// The value itself at most this (a latency, a size, a duration).
    AtMost(f64),
    /// The value itself at least this (a rate).
    AtLeast(f64),
    /// Reported, no target.
    None,
}

pub fn rows_file() -> PathBuf {
    std::env::var_os("KAFFLOW_BENCH_ROWS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-rows.jsonl")
        })
}

/// Appends one row. `baseline` is the same-run figure the value is compared with, if any.
pub fn row(
    bench: &str,
    figure: &str,
    value: f64,
    unit: &str,
    baseline: Option<f64>,
    target: Target,
) {
    let ratio = baseline.filter(|b| *b != 0.0).map(|b| value / b);
    let (target_text, met) = match target {
        Target::RatioAtLeast(t) => (format!("≥ {t} of baseline"), ratio.map(|r| r >= t)),
        Target::AtMost(t) => (format!("≤ {t} {unit}"), Some(value <= t)),
        Target::AtLeast(t) => (format!("≥ {t} {unit}"), Some(value >= t)),
        Target::None => (String::new(), None),
    };
    let line = json!({
        "bench": bench,
        "figure": figure,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "ratio": ratio,
        "target": target_text,
        "met": met,
    });
    let path = rows_file();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        Ok(mut file) => {
            let _ = writeln!(file, "{line}");
        }
        Err(e) => eprintln!("bench rows: cannot append to {}: {e}", path.display()),
    }
}

//! `make bench`'s last step: the rows every benchmark appended (`benches/common/report.rs`)
//! as one table, printed and written into `docs/benchmarks.md` between the markers
//! `<!-- bench-table:begin -->` and `<!-- bench-table:end -->`, with the machine, the broker
//! version, the commit and the date. Everything else in that file is left as it is.

#[path = "common/report.rs"]
mod report;

use std::process::Command;

use serde_json::Value;

const BEGIN: &str = "<!-- bench-table:begin -->";
const END: &str = "<!-- bench-table:end -->";

fn number(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.abs() >= 1000.0 => {
            let s = format!("{:.0}", x);
            let (sign, digits) = s.strip_prefix('-').map(|d| ("-", d)).unwrap_or(("", &s));
            let mut out = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            format!("{sign}{out}")
        }
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
        None => String::new(),
    }
}

fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
        })
        .map(|m| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    format!(
        "{cores} cores ({model}), {:.0} GiB",
        mem_kib as f64 / 1048576.0
    )
}

fn broker_version() -> String {
    let pom = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/kafka/pom.xml"
    ))
    .unwrap_or_default();
    pom.split("<kafka.version>")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .map(|v| format!("Apache Kafka {v}"))
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("bench report: skipped (run it with `make bench`)");
        return;
    }
    let path = report::rows_file();
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let rows: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if rows.is_empty() {
        println!("bench report: no rows in {}", path.display());
        return;
    }
    let commit = output("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = !output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let date = output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let mut table = format!(
        "Last `make bench`: {date}, commit `{commit}`{}, {}, broker {}, release build.\n\n\
         | bench | figure | value | baseline | ratio | target | met |\n|---|---|---|---|---|---|---|\n",
        if dirty { " (with uncommitted changes)" } else { "" },
        machine(),
        broker_version()
    );
    let (mut met, mut missed) = (0, 0);
    for r in &rows {
        let unit = r["unit"].as_str().unwrap_or("");
        let with_unit = |v: &Value| {
            let n = number(v);
            if n.is_empty() || unit.is_empty() {
                n
            } else {
                format!("{n} {unit}")
            }
        };
        let verdict = match r["met"].as_bool() {
            Some(true) => {
                met += 1;
                "yes"
            }
            Some(false) => {
                missed += 1;
                "**no**"
            }
            None => "",
        };
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r["bench"].as_str().unwrap_or(""),
            r["figure"].as_str().unwrap_or(""),
            with_unit(&r["value"]),
            with_unit(&r["baseline"]),
            number(&r["ratio"]),
            r["target"].as_str().unwrap_or(""),
            verdict
        ));
    }
    table.push_str(&format!("\n{met} targets met, {missed} missed.\n"));
    println!("\n{table}");

    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/benchmarks.md");
    let doc = std::fs::read_to_string(doc_path).unwrap_or_default();
    let updated = match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{BEGIN}\n{table}{}", &doc[..b], &doc[e..])
        }
        _ => {
            eprintln!(
                "bench report: no {BEGIN} … {END} markers in docs/benchmarks.md; not written"
            );
            return;
        }
    };
    if let Err(e) = std::fs::write(doc_path, updated) {
        eprintln!("bench report: cannot write docs/benchmarks.md: {e}");
    } else {
        println!("written to docs/benchmarks.md");
    }
}

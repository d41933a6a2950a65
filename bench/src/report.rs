//! results.jsonl → the Markdown report: medians per system, ratios, and the targets.

use crate::record::Record;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Column order; other systems follow alphabetically.
const SYSTEMS: [&str; 4] = ["raw", "bindfs", "glusterfs", "ringfs"];

pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// (test, metric) → system → median, plus units and direction per (test, metric).
pub struct Medians {
    pub values: BTreeMap<(String, String), BTreeMap<String, f64>>,
    pub meta: BTreeMap<(String, String), (String, bool)>,
    pub reps: BTreeMap<(String, String), usize>,
}

impl Medians {
    pub fn from_records(records: &[Record]) -> Medians {
        let mut raw: BTreeMap<(String, String), BTreeMap<String, Vec<f64>>> = BTreeMap::new();
        let mut meta = BTreeMap::new();
        for r in records {
            let key = (r.test.clone(), r.metric.clone());
            raw.entry(key.clone())
                .or_default()
                .entry(r.system.clone())
                .or_default()
                .push(r.value);
            meta.insert(key, (r.unit.clone(), r.higher_is_better));
        }
        let mut values = BTreeMap::new();
        let mut reps = BTreeMap::new();
        for (key, by_sys) in raw {
            let mut m = BTreeMap::new();
            let mut n = 0;
            for (sys, mut v) in by_sys {
                n = n.max(v.len());
                if let Some(x) = median(&mut v) {
                    m.insert(sys, x);
                }
            }
            reps.insert(key.clone(), n);
            values.insert(key, m);
        }
        Medians { values, meta, reps }
    }

    pub fn get(&self, system: &str, test: &str, metric: &str) -> Option<f64> {
        self.values
            .get(&(test.to_string(), metric.to_string()))
            .and_then(|m| m.get(system))
            .copied()
    }
}

fn fmt(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

/// One target: `value / base >= threshold` (or `value <= threshold` for absolute ceilings).
struct Target {
    what: &'static str,
    value: Option<f64>,
    base: Option<f64>,
    threshold: f64,
    /// true: value/base must be >= threshold; false: value/base must be <= threshold.
    at_least: bool,
}

fn targets(m: &Medians) -> Vec<Target> {
    let r = |t: &str, k: &str| m.get("ringfs", t, k);
    let raw_third = m.get("raw", "fio-seq-write", "write_bw").map(|v| v / 3.0);
    vec![
        Target {
            what: "sequential write ≥ 0.9 × (raw ÷ 3)",
            value: r("fio-seq-write", "write_bw"),
            base: raw_third,
            threshold: 0.9,
            at_least: true,
        },
        Target {
            what: "sequential write > GlusterFS",
            value: r("fio-seq-write", "write_bw"),
            base: m.get("glusterfs", "fio-seq-write", "write_bw"),
            threshold: 1.0,
            at_least: true,
        },
        Target {
            what: "sequential read ≥ 0.7 × bindfs",
            value: r("fio-seq-read", "read_bw"),
            base: m.get("bindfs", "fio-seq-read", "read_bw"),
            threshold: 0.7,
            at_least: true,
        },
        Target {
            what: "4K random read QD64 ≥ 0.5 × bindfs",
            value: r("fio-randread-4k-qd64", "read_iops"),
            base: m.get("bindfs", "fio-randread-4k-qd64", "read_iops"),
            threshold: 0.5,
            at_least: true,
        },
        Target {
            what: "4K random read QD64 ≥ 4 × GlusterFS",
            value: r("fio-randread-4k-qd64", "read_iops"),
            base: m.get("glusterfs", "fio-randread-4k-qd64", "read_iops"),
            threshold: 4.0,
            at_least: true,
        },
        Target {
            what: "file creates/s ≥ 0.5 × bindfs",
            value: r("md", "create_per_s"),
            base: m.get("bindfs", "md", "create_per_s"),
            threshold: 0.5,
            at_least: true,
        },
        Target {
            what: "file creates/s ≥ 3 × GlusterFS",
            value: r("md", "create_per_s"),
            base: m.get("glusterfs", "md", "create_per_s"),
            threshold: 3.0,
            at_least: true,
        },
        Target {
            what: "stat/s ≥ 0.5 × bindfs",
            value: r("md", "stat_per_s"),
            base: m.get("bindfs", "md", "stat_per_s"),
            threshold: 0.5,
            at_least: true,
        },
        Target {
            what: "Raft ≥ 20k commits/s with 256 clients",
            value: r("raft-256-clients", "commits_per_s"),
            base: Some(20_000.0),
            threshold: 1.0,
            at_least: true,
        },
        Target {
            what: "node RSS ≤ 256 MiB at 1 million blocks",
            value: m
                .get("ringfs", "node-blocks", "blocks")
                .filter(|n| *n >= 1e6)
                .and(r("node-blocks", "peak_rss_mib")),
            base: Some(256.0),
            threshold: 1.0,
            at_least: false,
        },
        Target {
            what: "p99 during rebalance ≤ 1.2 × steady state",
            value: r("rebalance", "p99_during_ms"),
            base: r("rebalance", "p99_steady_ms"),
            threshold: 1.2,
            at_least: false,
        },
    ]
}

pub fn render(m: &Medians, machine: &str, note: &str) -> String {
    let mut systems: Vec<String> = SYSTEMS.iter().map(|s| s.to_string()).collect();
    for by_sys in m.values.values() {
        for s in by_sys.keys() {
            if !systems.contains(s) {
                systems.push(s.clone());
            }
        }
    }
    let mut s = String::new();
    let _ = writeln!(s, "# ringfs benchmarks\n");
    if !note.is_empty() {
        let _ = writeln!(s, "{note}\n");
    }
    if !machine.is_empty() {
        let _ = writeln!(s, "Machine: {machine}\n");
    }
    let _ = writeln!(
        s,
        "Medians over the repetitions (systems alternated A/B/A/B within each repetition). \
         Ratios are ringfs ÷ the other system (for latencies and costs lower is better).\n"
    );
    let _ = write!(s, "| test | metric | unit | reps |");
    for sys in &systems {
        let _ = write!(s, " {sys} |");
    }
    let _ = writeln!(s, " ringfs/raw | ringfs/bindfs | ringfs/glusterfs |");
    let _ = write!(s, "|---|---|---|---|");
    for _ in &systems {
        let _ = write!(s, "---|");
    }
    let _ = writeln!(s, "---|---|---|");
    for ((test, metric), by_sys) in &m.values {
        let (unit, higher) = m
            .meta
            .get(&(test.clone(), metric.clone()))
            .cloned()
            .unwrap_or_default();
        let reps = m
            .reps
            .get(&(test.clone(), metric.clone()))
            .copied()
            .unwrap_or(0);
        let arrow = if higher { "↑" } else { "↓" };
        let _ = write!(s, "| {test} | {metric} {arrow} | {unit} | {reps} |");
        for sys in &systems {
            let _ = write!(
                s,
                " {} |",
                by_sys
                    .get(sys)
                    .map(|v| fmt(*v))
                    .unwrap_or_else(|| "–".into())
            );
        }
        let rf = by_sys.get("ringfs").copied();
        for other in ["raw", "bindfs", "glusterfs"] {
            let _ = write!(s, " {} |", ratio(rf, by_sys.get(other).copied()));
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "\n## Targets\n");
    let _ = writeln!(s, "| target | ringfs | reference | ratio | met |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    for t in targets(m) {
        let (ratio, met) = match (t.value, t.base) {
            (Some(v), Some(b)) if b != 0.0 => {
                let r = v / b;
                let ok = if t.at_least {
                    r >= t.threshold
                } else {
                    r <= t.threshold
                };
                (format!("{r:.2}"), if ok { "yes" } else { "**no**" })
            }
            _ => ("–".into(), "not measured"),
        };
        let show = |v: Option<f64>| v.map(fmt).unwrap_or_else(|| "–".into());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {ratio} | {met} |",
            t.what,
            show(t.value),
            show(t.base)
        );
    }
    s
}

pub fn write(results: &Path, out: &Path, machine: &str, note: &str) -> Result<()> {
    let text = std::fs::read_to_string(results)
        .with_context(|| format!("reading {}", results.display()))?;
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: Record = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a result record", results.display(), i + 1))?;
        records.push(r);
    }
    if records.is_empty() {
        bail!("{} holds no results", results.display());
    }
    let md = render(&Medians::from_records(&records), machine, note);
    std::fs::write(out, &md).with_context(|| format!("writing {}", out.display()))?;
    print!("{md}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(system: &str, test: &str, metric: &str, value: f64, rep: u32) -> Record {
        Record {
            system: system.into(),
            test: test.into(),
            metric: metric.into(),
            unit: "MiB/s".into(),
            value,
            rep,
            higher_is_better: true,
        }
    }

    #[test]
    fn medians_handle_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn report_has_medians_ratios_and_target_verdicts() {
        let mut rs = Vec::new();
        for (rep, (raw, gl, rf)) in [
            (300.0, 90.0, 95.0),
            (330.0, 80.0, 85.0),
            (270.0, 100.0, 90.0),
        ]
        .into_iter()
        .enumerate()
        {
            let rep = rep as u32 + 1;
            rs.push(rec("raw", "fio-seq-write", "write_bw", raw, rep));
            rs.push(rec("glusterfs", "fio-seq-write", "write_bw", gl, rep));
            rs.push(rec("ringfs", "fio-seq-write", "write_bw", rf, rep));
        }
        let m = Medians::from_records(&rs);
        assert_eq!(m.get("raw", "fio-seq-write", "write_bw"), Some(300.0));
        assert_eq!(m.get("ringfs", "fio-seq-write", "write_bw"), Some(90.0));
        let md = render(&m, "test box", "");
        // 90 / (300 / 3) = 0.90 → met; 90 / 90 = 1.00 → met (>= 1.0).
        assert!(
            md.contains("| sequential write ≥ 0.9 × (raw ÷ 3) | 90.0 | 100 | 0.90 | yes |"),
            "{md}"
        );
        assert!(md.contains("| fio-seq-write | write_bw ↑ | MiB/s | 3 | 300 | – | 90.0 | 90.0 | 0.30 | – | 1.00 |"), "{md}");
        assert!(
            md.contains("| Raft ≥ 20k commits/s with 256 clients | – | 20000 | – | not measured |"),
            "{md}"
        );
    }
}

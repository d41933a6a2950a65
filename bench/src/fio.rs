//! Records from fio's JSON output (`--output-format=json`).

use crate::record::emit;
use crate::Tags;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

/// One direction (read/write) of one fio job.
#[derive(Debug, PartialEq)]
pub struct Dir {
    pub name: &'static str,
    pub bw_mib_s: f64,
    pub iops: f64,
    pub p99_us: Option<f64>,
    pub mean_us: Option<f64>,
}

/// fio may print warnings before the JSON document: start at the first '{'.
pub fn parse(text: &str) -> Result<Vec<Dir>> {
    let Some(at) = text.find('{') else {
        bail!("no JSON document in the fio output");
    };
    let doc: Value = serde_json::from_str(&text[at..]).context("fio output is not JSON")?;
    let Some(jobs) = doc.get("jobs").and_then(Value::as_array) else {
        bail!("fio output has no \"jobs\" array");
    };
    let mut out = Vec::new();
    for job in jobs {
        if let Some(err) = job.get("error").and_then(Value::as_i64) {
            if err != 0 {
                bail!("fio job failed with error {err}");
            }
        }
        for name in ["read", "write"] {
            let Some(d) = job.get(name) else { continue };
            let io = d.get("io_bytes").and_then(Value::as_f64).unwrap_or(0.0);
            if io <= 0.0 {
                continue;
            }
            let num = |v: Option<&Value>| v.and_then(Value::as_f64);
            let p99 = num(d.pointer("/clat_ns/percentile/99.000000")).map(|ns| ns / 1e3);
            let mean = num(d.pointer("/lat_ns/mean"))
                .filter(|m| *m > 0.0)
                .map(|ns| ns / 1e3);
            out.push(Dir {
                name,
                bw_mib_s: num(d.get("bw")).unwrap_or(0.0) / 1024.0,
                iops: num(d.get("iops")).unwrap_or(0.0),
                p99_us: p99.filter(|p| *p > 0.0),
                mean_us: mean,
            });
        }
    }
    if out.is_empty() {
        bail!("fio output has no job that read or wrote anything");
    }
    Ok(out)
}

pub fn extract(tags: &Tags, test: &str, file: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    for d in parse(&text).with_context(|| format!("in {}", file.display()))? {
        emit(
            tags,
            test,
            &format!("{}_bw", d.name),
            "MiB/s",
            d.bw_mib_s,
            true,
        );
        emit(
            tags,
            test,
            &format!("{}_iops", d.name),
            "IOPS",
            d.iops,
            true,
        );
        if let Some(p) = d.p99_us {
            emit(tags, test, &format!("{}_p99", d.name), "µs", p, false);
        }
        if let Some(m) = d.mean_us {
            emit(tags, test, &format!("{}_mean_lat", d.name), "µs", m, false);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fio_json_after_warnings() {
        let text = r#"fio: some warning
{"jobs":[{"jobname":"j","error":0,
  "read":{"io_bytes":4096,"bw":2048,"iops":512.5,
          "clat_ns":{"percentile":{"99.000000":12000}},"lat_ns":{"mean":5000}},
  "write":{"io_bytes":0,"bw":0,"iops":0}}]}"#;
        let d = parse(text).unwrap();
        assert_eq!(
            d,
            vec![Dir {
                name: "read",
                bw_mib_s: 2.0,
                iops: 512.5,
                p99_us: Some(12.0),
                mean_us: Some(5.0)
            }]
        );
    }

    #[test]
    fn failed_or_empty_runs_are_errors() {
        assert!(parse("no json").is_err());
        assert!(parse(r#"{"jobs":[{"error":5,"read":{"io_bytes":1}}]}"#).is_err());
        assert!(parse(r#"{"jobs":[{"error":0,"read":{"io_bytes":0}}]}"#).is_err());
    }
}

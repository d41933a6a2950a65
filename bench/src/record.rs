//! Result records and process cost sampling.

use crate::Tags;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::process::Command;
use std::time::{Duration, Instant};

/// One measured value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub system: String,
    pub test: String,
    pub metric: String,
    pub unit: String,
    pub value: f64,
    pub rep: u32,
    /// false for latencies and costs.
    pub higher_is_better: bool,
}

pub fn emit(tags: &Tags, test: &str, metric: &str, unit: &str, value: f64, higher: bool) {
    let r = Record {
        system: tags.system.clone(),
        test: test.to_string(),
        metric: metric.to_string(),
        unit: unit.to_string(),
        value,
        rep: tags.rep,
        higher_is_better: higher,
    };
    match serde_json::to_string(&r) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("cannot encode record {r:?}: {e}"),
    }
}

/// Parses "1,64,256" into numbers, with a message naming the flag on bad input.
pub fn parse_list<T: std::str::FromStr>(flag: &str, s: &str) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse() {
            Ok(v) => out.push(v),
            Err(_) => bail!("--{flag}: {part:?} is not a number (expected e.g. 1,64,256)"),
        }
    }
    if out.is_empty() {
        bail!("--{flag} is empty (expected a comma-separated list of numbers)");
    }
    Ok(out)
}

/// CPU seconds (user + system) and resident set size of one process, from /proc.
pub fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15, rss (pages) 24.
    let ticks = clock_ticks();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let rss_pages: u64 = f.get(21)?.parse().ok()?;
    Some(((utime + stime) / ticks, rss_pages * page_size()))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Runs `command`, sampling `pids` every 100 ms: prints CPU seconds per GiB and peak RSS.
pub fn cost(tags: &Tags, test: &str, pids: &str, bytes: u64, command: &[String]) -> Result<()> {
    let given: Vec<u32> = parse_list("pids", pids)?;
    // Daemons may come and go (GlusterFS runs short-lived helpers): count the live ones.
    let pids: Vec<u32> = given
        .iter()
        .copied()
        .filter(|p| proc_usage(*p).is_some())
        .collect();
    if pids.is_empty() {
        bail!("none of the processes {given:?} exists (pass the pids of the system's daemons)");
    }
    if bytes == 0 {
        bail!("--bytes must be greater than 0 (the bytes the command moves)");
    }
    let usage = |pids: &[u32]| -> (f64, u64) {
        pids.iter()
            .filter_map(|p| proc_usage(*p))
            .fold((0.0, 0), |(c, r), (c2, r2)| (c + c2, r + r2))
    };
    let (cpu0, rss0) = usage(&pids);
    let mut peak = rss0;
    let Some((prog, args)) = command.split_first() else {
        bail!("no command given after the options");
    };
    let mut child = Command::new(prog)
        .args(args)
        .spawn()
        .with_context(|| format!("starting {prog}"))?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        peak = peak.max(usage(&pids).1);
        std::thread::sleep(Duration::from_millis(100)); // sampling period, not a wait
    };
    if !status.success() {
        bail!("{prog} failed: {status}");
    }
    let (cpu1, rss1) = usage(&pids);
    peak = peak.max(rss1);
    let gib = bytes as f64 / (1u64 << 30) as f64;
    emit(
        tags,
        test,
        "cpu_s_per_gib",
        "CPU s/GiB",
        (cpu1 - cpu0) / gib,
        false,
    );
    emit(
        tags,
        test,
        "peak_rss_mib",
        "MiB",
        peak as f64 / (1u64 << 20) as f64,
        false,
    );
    eprintln!(
        "[cost] {} {test}: {:.2} CPU s over {:.1} s",
        tags.system,
        cpu1 - cpu0,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_refuse_garbage() {
        assert_eq!(
            parse_list::<u32>("x", "1, 64,256").unwrap(),
            vec![1, 64, 256]
        );
        let e = parse_list::<u32>("clients", "1,a").unwrap_err().to_string();
        assert!(e.contains("--clients") && e.contains("\"a\""), "{e}");
        assert!(parse_list::<u32>("x", "").is_err());
    }

    #[test]
    fn own_process_usage_is_read() {
        let (cpu, rss) = proc_usage(std::process::id()).expect("own /proc entry");
        assert!(cpu >= 0.0);
        assert!(rss > 1 << 20, "a test process uses more than 1 MiB: {rss}");
    }
}

//! Health figures read from procfs.

use std::path::{Path, PathBuf};

use vpod_agent_api::pb::HealthReport;

use crate::clock::boottime_ns;

/// Why a health figure could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// A /proc file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// A /proc file did not look as expected.
    #[error("parse {path}: unexpected content {content:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it held.
        content: String,
    },
}

/// Reads uptime, load and memory from `proc_root` (normally `/proc`).
pub fn read_health(proc_root: &Path) -> Result<HealthReport, HealthError> {
    let mut report = HealthReport {
        boottime_ns: boottime_ns(),
        ..Default::default()
    };

    let (path, text) = read(proc_root, "uptime")?;
    report.uptime_ns = parse_uptime(&text).ok_or_else(|| parse_err(&path, &text))?;

    let (path, text) = read(proc_root, "loadavg")?;
    let (l1, l5, l15, procs) = parse_loadavg(&text).ok_or_else(|| parse_err(&path, &text))?;
    report.load1 = l1;
    report.load5 = l5;
    report.load15 = l15;
    report.procs_total = procs;

    let (path, text) = read(proc_root, "meminfo")?;
    let mem = parse_meminfo(&text).ok_or_else(|| parse_err(&path, &text))?;
    report.mem_total_bytes = mem.total;
    report.mem_free_bytes = mem.free;
    report.mem_available_bytes = mem.available;

    Ok(report)
}

fn read(proc_root: &Path, name: &str) -> Result<(PathBuf, String), HealthError> {
    let path = proc_root.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((path, text)),
        Err(source) => Err(HealthError::Read { path, source }),
    }
}

fn parse_err(path: &Path, text: &str) -> HealthError {
    HealthError::Parse {
        path: path.to_path_buf(),
        content: text.chars().take(200).collect(),
    }
}

/// `/proc/uptime`: "12345.67 890.12" -> ns.
fn parse_uptime(text: &str) -> Option<u64> {
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some((secs * 1e9) as u64)
}

/// `/proc/loadavg`: "0.10 0.20 0.30 1/123 4567" -> loads and total procs.
fn parse_loadavg(text: &str) -> Option<(f64, f64, f64, u32)> {
    let mut f = text.split_whitespace();
    let l1 = f.next()?.parse().ok()?;
    let l5 = f.next()?.parse().ok()?;
    let l15 = f.next()?.parse().ok()?;
    let (_, total) = f.next()?.split_once('/')?;
    Some((l1, l5, l15, total.parse().ok()?))
}

#[derive(Debug, PartialEq, Eq)]
struct Mem {
    total: u64,
    free: u64,
    available: u64,
}

/// `/proc/meminfo` -> bytes. MemAvailable is optional (very old kernels).
fn parse_meminfo(text: &str) -> Option<Mem> {
    let mut total = None;
    let mut free = None;
    let mut available = 0;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let kib = || -> Option<u64> {
            let mut f = rest.split_whitespace();
            let v: u64 = f.next()?.parse().ok()?;
            Some(v.saturating_mul(1024))
        };
        match key {
            "MemTotal" => total = Some(kib()?),
            "MemFree" => free = Some(kib()?),
            "MemAvailable" => available = kib()?,
            _ => {}
        }
    }
    Some(Mem {
        total: total?,
        free: free?,
        available,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(parse_uptime("1.50 0.25\n"), Some(1_500_000_000));
        assert_eq!(parse_uptime("x 1"), None);
        assert_eq!(parse_uptime(""), None);
        assert_eq!(parse_uptime("-1 0"), None);

        assert_eq!(
            parse_loadavg("0.10 0.20 0.30 1/123 4567\n"),
            Some((0.1, 0.2, 0.3, 123))
        );
        assert_eq!(parse_loadavg("0.10 0.20 0.30 1-123 4567"), None);
        assert_eq!(parse_loadavg("0.10"), None);

        let mem = "MemTotal:  2048 kB\nMemFree:   1024 kB\nMemAvailable: 1536 kB\nBuffers: 1 kB\n";
        assert_eq!(
            parse_meminfo(mem),
            Some(Mem {
                total: 2048 * 1024,
                free: 1024 * 1024,
                available: 1536 * 1024
            })
        );
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: x kB\nMemFree: 1 kB\n"), None);
    }

    #[test]
    fn reads_host_proc() {
        let r = read_health(Path::new("/proc")).unwrap();
        assert!(r.uptime_ns > 0);
        assert!(r.mem_total_bytes > 0 && r.mem_free_bytes <= r.mem_total_bytes);
        assert!(r.procs_total > 0);
    }

    #[test]
    fn missing_proc_is_a_clear_error() {
        let err = read_health(Path::new("/nonexistent-proc")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-proc/uptime"),
            "{err}"
        );
    }
}

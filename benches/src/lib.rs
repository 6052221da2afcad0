//! Benchmarks live in `benches/`. What several of them share is here: what a process has
//! used, read from `/proc`.

use std::time::Duration;

/// CPU time (user and system, all threads) and resident memory of a process.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub cpu: Duration,
    pub rss_kib: u64,
}

/// The kernel's clock ticks per second, the unit of `/proc/PID/stat`'s CPU times.
#[must_use]
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// What process `pid` has used so far; `None` once it is gone (or `/proc` is unreadable).
#[must_use]
pub fn usage(pid: u32, ticks: u64) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(Usage { cpu: Duration::from_millis((utime + stime) * 1000 / ticks.max(1)), rss_kib })
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_used_cpu_and_memory() {
        let u = super::usage(std::process::id(), super::clock_ticks()).expect("our own /proc entry");
        assert!(u.rss_kib > 0);
        assert!(super::usage(u32::MAX, 100).is_none(), "no such process");
    }
}

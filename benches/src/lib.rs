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

/// The name and the CPU time (user and system, in clock ticks) of a `/proc/.../stat` line.
fn name_and_ticks(stat: &str) -> Option<(&str, u64)> {
    // The name is in parentheses and may hold spaces and parentheses of its own; the
    // fields after it start at the state, field 3.
    let (head, rest) = stat.rsplit_once(')')?;
    let (_, name) = head.split_once('(')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((name, f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?))
}

/// What process `pid` has used so far; `None` once it is gone (or `/proc` is unreadable).
#[must_use]
pub fn usage(pid: u32, ticks: u64) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, used) = name_and_ticks(&stat)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(Usage { cpu: Duration::from_millis(used * 1000 / ticks.max(1)), rss_kib })
}

/// The file `name` (`stat`, `status`) of each live thread of process `pid`: none once the
/// process is gone.
fn thread_files(pid: u32, name: &'static str) -> impl Iterator<Item = String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .filter_map(move |t| std::fs::read_to_string(t.ok()?.path().join(name)).ok())
}

/// CPU time (user and system) that the threads of process `pid` whose name starts with
/// `prefix` have used so far: say `rocksdb:` for RocksDB's flushes and compactions. A
/// thread that has ended no longer counts, so only differences over a window in which
/// the threads live (RocksDB's pool lives as long as its database) mean anything.
#[must_use]
pub fn threads_cpu(pid: u32, ticks: u64, prefix: &str) -> Duration {
    let ticks_used: u64 = thread_files(pid, "stat")
        .filter_map(|stat| name_and_ticks(&stat).filter(|(name, _)| name.starts_with(prefix)).map(|(_, used)| used))
        .sum();
    Duration::from_millis(ticks_used * 1000 / ticks.max(1))
}

/// Context switches (voluntary and not) of the live threads of process `pid` so far: how
/// often its threads gave up or lost a core. As with [`threads_cpu`], a thread that has
/// ended no longer counts, so only differences over a window mean anything.
#[must_use]
pub fn context_switches(pid: u32) -> u64 {
    thread_files(pid, "status")
        .map(|status| {
            status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:").or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_used_cpu_and_memory() {
        let u = super::usage(std::process::id(), super::clock_ticks()).expect("our own /proc entry");
        assert!(u.rss_kib > 0);
        assert!(super::usage(u32::MAX, 100).is_none(), "no such process");
    }

    #[test]
    fn a_thread_is_found_by_its_name() {
        let ticks = super::clock_ticks();
        let busy = std::thread::Builder::new()
            .name("bench-spin".into())
            .spawn(|| {
                // Work, not wall time: CPU enough for the kernel's clock ticks to count
                // (a tenth of a second or more), however busy the machine is.
                (0..100_000_000u64).fold(0u64, |x, i| std::hint::black_box(x.wrapping_add(i)))
            })
            .expect("spawn");
        let me = std::process::id();
        let mut seen = std::time::Duration::ZERO;
        while !busy.is_finished() {
            seen = seen.max(super::threads_cpu(me, ticks, "bench-spin"));
        }
        busy.join().expect("join");
        assert!(seen > std::time::Duration::ZERO, "the spinning thread's CPU was seen");
        assert_eq!(super::threads_cpu(me, ticks, "no-such-thread"), std::time::Duration::ZERO);
    }

    #[test]
    fn a_thread_that_sleeps_switches() {
        let me = std::process::id();
        let before = super::context_switches(me);
        // Each sleep gives the core up: a voluntary switch of this thread.
        for _ in 0..5 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(super::context_switches(me) >= before + 5);
        assert_eq!(super::context_switches(u32::MAX), 0, "no such process");
    }
}

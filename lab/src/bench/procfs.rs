//! Reading /proc: how idle the machine is, and a process's memory and CPU time.

use std::time::{Duration, Instant};

/// Whole-machine CPU counters from the first line of /proc/stat: (idle incl. iowait, total), in ticks.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((idle, fields.iter().take(8).sum()))
}

/// The share of all CPUs that was idle over `window` (0..=100), measured by sleeping through it.
pub fn idle_percent(window: Duration) -> Option<f64> {
    let (idle0, total0) = cpu_ticks()?;
    std::thread::sleep(window);
    let (idle1, total1) = cpu_ticks()?;
    let total = total1.checked_sub(total0)?;
    (total > 0).then(|| 100.0 * (idle1 - idle0) as f64 / total as f64)
}

/// Resident memory of `pid` in MiB (VmRSS).
pub fn rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmRSS:")
}

/// The most resident memory `pid` ever had, in MiB (VmHWM).
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmHWM:")
}

fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status.lines().find_map(|l| l.strip_prefix(field))?.split_whitespace().next()?.parse().ok()?;
    Some(kib / 1024.0)
}

/// User plus system CPU time `pid` has used so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised name; utime and stime are fields 14 and 15 of the whole line.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(Duration::from_secs_f64(ticks as f64 / hz))
}

/// CPU used by `pid` over `window`, as a percentage of one core.
pub fn cpu_percent(pid: u32, window: Duration) -> Option<f64> {
    let before = cpu_time(pid)?;
    let started = Instant::now();
    std::thread::sleep(window);
    let after = cpu_time(pid)?;
    Some(100.0 * (after.saturating_sub(before)).as_secs_f64() / started.elapsed().as_secs_f64())
}

/// Now in UTC as (`2026-11-25 17:45:36 UTC`, `20261125T174536Z`), without a date library.
pub fn utc_now() -> (String, String) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let (y, mo, d) = civil_from_days(days);
    (format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02} UTC"), format!("{y:04}{mo:02}{d:02}T{h:02}{m:02}{s:02}Z"))
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `uname -r`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "?".to_string(), |s| s.trim().to_string())
}

pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn reads_our_own_process() {
        let pid = std::process::id();
        assert!(rss_mib(pid).is_some_and(|m| m > 0.0));
        assert!(cpu_time(pid).is_some());
    }
}

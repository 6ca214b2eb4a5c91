//! What a flood cost the server: the CPU time (user + system, every thread)
//! of the processes named by `--server-pid`, read from `/proc/PID/stat`
//! before and after the load, divided by the orders it accepted and by the
//! requests it answered. The kernel counts in clock ticks
//! (`sysconf(_SC_CLK_TCK)`, 100 per second on Linux), so a flood of a few
//! seconds measures to well under a percent.

use std::time::Duration;

use anyhow::{anyhow, Context as _};
use serde::Serialize;

/// `utime` and `stime` of a `/proc/PID/stat` line, in clock ticks.
///
/// The second field, the command name, is in parentheses and may itself
/// hold spaces and parentheses, so the fields are counted from the last
/// `)`: `utime` and `stime` are the 14th and 15th fields of the line.
pub fn parse_stat(line: &str) -> Option<(u64, u64)> {
    let (_, rest) = line.rsplit_once(')')?;
    // After the name: state (3), ppid (4), …, utime (14), stime (15).
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime = fields.next()?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// Clock ticks per second of the times in `/proc/PID/stat`.
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value; it has no
    // preconditions and touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// CPU time `pid` has used so far (user + system, all its threads).
///
/// # Errors
/// When the process does not exist or its stat line cannot be read.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let line = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let (utime, stime) = parse_stat(&line).ok_or_else(|| anyhow!("unexpected {path}: {line}"))?;
    let ticks = utime.saturating_add(stime);
    let per_second = ticks_per_second();
    Ok(Duration::from_micros(
        ticks.saturating_mul(1_000_000) / per_second,
    ))
}

/// The servers' CPU times when the load started.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    start: Vec<(u32, Duration)>,
}

impl CpuMeter {
    /// Reads the CPU time of every process in `pids`.
    ///
    /// # Errors
    /// As [`cpu_time`].
    pub fn start(pids: &[u32]) -> anyhow::Result<Self> {
        let start = pids
            .iter()
            .map(|&pid| Ok((pid, cpu_time(pid)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { start })
    }

    /// The CPU the processes used since [`CpuMeter::start`], per accepted
    /// order and per request.
    ///
    /// # Errors
    /// As [`cpu_time`]: a process that exited during the load.
    pub fn finish(&self, accepted: u64, requests: u64) -> anyhow::Result<ServerCpu> {
        let mut used = Duration::ZERO;
        for &(pid, before) in &self.start {
            used += cpu_time(pid)?.saturating_sub(before);
        }
        Ok(ServerCpu::new(
            self.start.iter().map(|&(pid, _)| pid).collect(),
            used,
            accepted,
            requests,
        ))
    }
}

/// What the load cost the servers, in CPU microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerCpu {
    /// The processes measured.
    pub pids: Vec<u32>,
    /// CPU time they used during the load, µs.
    pub cpu_us: u64,
    /// Per accepted order (`None` when none was accepted).
    pub us_per_accept: Option<f64>,
    /// Per request sent (`None` without requests).
    pub us_per_request: Option<f64>,
}

impl ServerCpu {
    /// `used` CPU over `accepted` orders and `requests` requests.
    pub fn new(pids: Vec<u32>, used: Duration, accepted: u64, requests: u64) -> Self {
        let us = u64::try_from(used.as_micros()).unwrap_or(u64::MAX);
        let per = |n: u64| (n > 0).then(|| (us as f64 / n as f64 * 100.0).round() / 100.0);
        Self {
            pids,
            cpu_us: us,
            us_per_accept: per(accepted),
            us_per_request: per(requests),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_whatever_the_command_name() {
        // A real line (fields 14 and 15 are 1523 and 377).
        let plain = "4242 (flashsale) S 1 4242 4242 0 -1 4194560 9046 0 0 0 1523 377 0 0 \
                     20 0 9 0 1234 123456789 4321 18446744073709551615 1 1 0 0 0 0 0 4096 \
                     17664 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat(plain), Some((1523, 377)));
        // The name may hold spaces and parentheses: count from the last `)`.
        let odd = "7 (a (b) c) ) R 1 7 7 0 -1 0 0 0 0 0 10 20 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat(odd), Some((10, 20)));
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("7 (x) R 1 2 3"), None, "too short");
        assert_eq!(
            parse_stat("7 (x) R 1 7 7 0 -1 0 0 0 0 0 ten 20"),
            None,
            "not a number"
        );
    }

    #[test]
    fn this_process_uses_cpu() {
        let pid = std::process::id();
        let meter = CpuMeter::start(&[pid]).unwrap();
        // Burn CPU until the kernel has counted a few clock ticks of it
        // (bounded, on a busy machine).
        let before = cpu_time(pid).unwrap();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_time(pid).unwrap().saturating_sub(before) < Duration::from_millis(30)
            && started.elapsed() < Duration::from_secs(20)
        {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let cpu = meter.finish(10, 20).unwrap();
        assert_eq!(cpu.pids, [pid]);
        assert!(cpu.cpu_us >= 30_000, "{cpu:?}");
        let per_accept = cpu.us_per_accept.unwrap();
        assert!(
            (per_accept - cpu.cpu_us as f64 / 10.0).abs() < 0.01,
            "{cpu:?}"
        );
        assert!(CpuMeter::start(&[u32::MAX]).is_err(), "no such process");
    }

    #[test]
    fn per_order_figures() {
        let cpu = ServerCpu::new(vec![1], Duration::from_millis(300), 20_000, 40_000);
        assert_eq!(cpu.cpu_us, 300_000);
        assert_eq!(cpu.us_per_accept, Some(15.0));
        assert_eq!(cpu.us_per_request, Some(7.5));
        let idle = ServerCpu::new(vec![1], Duration::ZERO, 0, 0);
        assert_eq!((idle.us_per_accept, idle.us_per_request), (None, None));
    }
}

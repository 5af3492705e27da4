//! CPU seconds, memory and threads from Linux's /proc: of a whole process, or of this
//! process's threads with a given name. The one copy for the benchmarks and src/hub.rs's
//! tests, which include this file with `#[path]`; so it uses std only.

use std::io;
use std::path::Path;

/// Linux's USER_HZ: /proc counts CPU time in ticks of 1/100 s.
const TICKS_PER_S: f64 = 100.0;

/// One reading of `/proc/<pid>`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcStats {
    /// User + system CPU seconds so far (10 ms resolution).
    pub cpu_s: f64,
    pub rss_kib: u64,
    /// Peak RSS so far.
    pub hwm_kib: u64,
    pub threads: u64,
}

impl ProcStats {
    /// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
    ///
    /// # Errors
    /// The process is gone, or the files do not look like Linux's.
    pub fn read(pid: u32) -> io::Result<ProcStats> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(ProcStats {
            cpu_s: cpu_s(format!("/proc/{pid}/stat"))?,
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
            threads: field("Threads:"),
        })
    }
}

/// User + system CPU seconds from a `stat` file: `/proc/<pid>/stat`, `/proc/self/stat`,
/// `/proc/thread-self/stat` or `/proc/self/task/<tid>/stat`.
///
/// # Errors
/// The file cannot be read or does not look like Linux's.
pub fn cpu_s(stat_path: impl AsRef<Path>) -> io::Result<f64> {
    stat_cpu_s(&std::fs::read_to_string(stat_path)?)
}

/// CPU seconds of this process's threads whose name (`comm`, at most 15 bytes) is one of
/// `names`; threads that end while they are read count as 0.
///
/// # Errors
/// `/proc/self/task` cannot be listed, or a `stat` file does not look like Linux's.
pub fn threads_cpu_s(names: &[&str]) -> io::Result<f64> {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let dir = entry?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !names.contains(&comm.trim_end()) {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(dir.join("stat")) {
            total += stat_cpu_s(&stat)?;
        }
    }
    Ok(total)
}

/// Fields 14 (utime) and 15 (stime) of a `stat` file's text, in seconds.
fn stat_cpu_s(text: &str) -> io::Result<f64> {
    let bad =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("/proc stat: {what}"));
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let (_, rest) = text.rsplit_once(')').ok_or_else(|| bad("no ')'"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is index 0, so utime (14) is index 11 and stime (15) 12.
    let ticks = |i: usize| -> io::Result<f64> {
        let field = fields.get(i).ok_or_else(|| bad("too few fields"))?;
        field
            .parse::<f64>()
            .map_err(|_| bad("a time is not a number"))
    };
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_S)
}

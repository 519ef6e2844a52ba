//! The standard `process_*` metrics (CPU seconds, memory, file descriptors, start time), read
//! from `/proc/self` at each scrape and written straight into the `/metrics` text.
//!
//! Why not the `metrics-process` crate (2.4, which does support metrics 0.24): a `metrics`
//! counter holds a `u64`, so it records `process_cpu_seconds_total` in whole seconds (or, with a
//! feature, as a gauge, the wrong type for a `_total`), and it brings `procfs` and its
//! dependencies for six numbers. Reading two small files and one directory at scrape time, as
//! Prometheus' own client libraries do, gives fractional CPU seconds and fresh values in a page
//! of code. Linux only: elsewhere these metrics are absent.

use std::fmt::Write;
use std::sync::Once;

use super::catalog::{
    PROCESS_CPU_SECONDS, PROCESS_MAX_FDS, PROCESS_OPEN_FDS, PROCESS_RESIDENT_MEMORY,
    PROCESS_START_TIME, PROCESS_VIRTUAL_MEMORY,
};

/// Why the process metrics could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// A file under `/proc` could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file under `/proc` did not have the expected shape.
    #[error("{path}: unexpected format ({what})")]
    Format {
        /// The file.
        path: &'static str,
        /// What was missing.
        what: &'static str,
    },
    /// Not Linux: there is no `/proc/self`.
    #[error("process metrics are read from /proc, which this system does not have")]
    Unsupported,
}

/// One reading of the process's resources.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit of open file descriptors.
    pub max_fds: u64,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

/// The fields of `/proc/self/stat` these metrics need, in the units of the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
    /// Since boot, in clock ticks.
    start_ticks: u64,
    vsize_bytes: u64,
    rss_pages: u64,
}

/// Parses `/proc/self/stat` (see proc(5)). The command name, field 2, is in parentheses and
/// may hold spaces or parentheses itself: fields are counted after its last `)`.
fn parse_stat(text: &str) -> Result<Stat, ProcessError> {
    let bad = |what| ProcessError::Format {
        path: "/proc/self/stat",
        what,
    };
    let rest = &text[text.rfind(')').ok_or_else(|| bad("no command name"))? + 1..];
    // Field 3 (state) is the first after the name; fields are numbered from 1.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize, what| -> Result<u64, ProcessError> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| bad(what))
    };
    Ok(Stat {
        cpu_ticks: field(14, "utime")? + field(15, "stime")?,
        start_ticks: field(22, "starttime")?,
        vsize_bytes: field(23, "vsize")?,
        rss_pages: field(24, "rss")?,
    })
}

/// The boot time, `btime` of `/proc/stat`, in seconds since the Unix epoch.
fn parse_boot_time(text: &str) -> Result<u64, ProcessError> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(ProcessError::Format {
            path: "/proc/stat",
            what: "btime",
        })
}

#[cfg(target_os = "linux")]
fn read_file(path: &'static str) -> Result<String, ProcessError> {
    std::fs::read_to_string(path).map_err(|source| ProcessError::Read { path, source })
}

/// Reads the process's resources now.
#[cfg(target_os = "linux")]
pub fn read() -> Result<ProcessStats, ProcessError> {
    // SAFETY: sysconf and getrlimit only read process-wide values into our own memory.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let (ticks, page) = (ticks.max(1) as f64, page.max(1) as u64);
    let stat = parse_stat(&read_file("/proc/self/stat")?)?;
    let boot = parse_boot_time(&read_file("/proc/stat")?)?;
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map_err(|source| ProcessError::Read {
            path: "/proc/self/fd",
            source,
        })?
        .count() as u64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above; `limit` is a valid, exclusively borrowed rlimit.
    let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        0
    };
    Ok(ProcessStats {
        cpu_seconds: stat.cpu_ticks as f64 / ticks,
        resident_bytes: stat.rss_pages * page,
        virtual_bytes: stat.vsize_bytes,
        open_fds,
        max_fds,
        start_time_seconds: boot as f64 + stat.start_ticks as f64 / ticks,
    })
}

/// Reads the process's resources now (not Linux: there is nothing to read).
#[cfg(not(target_os = "linux"))]
pub fn read() -> Result<ProcessStats, ProcessError> {
    Err(ProcessError::Unsupported)
}

/// Appends the `process_*` series to a Prometheus text body. If they cannot be read they are
/// left out, and the reason is logged once.
pub fn render(out: &mut String) {
    let stats = match read() {
        Ok(s) => s,
        Err(e) => {
            static LOGGED: Once = Once::new();
            LOGGED.call_once(|| tracing::warn!(error = %e, "process metrics left out of /metrics"));
            return;
        }
    };
    let values: [(&str, f64); 6] = [
        (PROCESS_CPU_SECONDS, stats.cpu_seconds),
        (PROCESS_RESIDENT_MEMORY, stats.resident_bytes as f64),
        (PROCESS_VIRTUAL_MEMORY, stats.virtual_bytes as f64),
        (PROCESS_OPEN_FDS, stats.open_fds as f64),
        (PROCESS_MAX_FDS, stats.max_fds as f64),
        (PROCESS_START_TIME, stats.start_time_seconds),
    ];
    for (name, value) in values {
        super::write_header(out, name);
        let _ = writeln!(out, "{name} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_memory_and_start_from_a_stat_line_whose_name_holds_spaces_and_parens() {
        let line = "3500 (a (b) c) R 3498 3498 17533 0 -1 4194304 98 0 0 0 250 50 0 0 20 0 1 0 \
                    1318412 3133440 382 18446744073709551615 94016842166272 0";
        let s = parse_stat(line).expect("parses");
        assert_eq!(
            s,
            Stat {
                cpu_ticks: 300,
                start_ticks: 1_318_412,
                vsize_bytes: 3_133_440,
                rss_pages: 382,
            }
        );
        assert!(matches!(
            parse_stat("12 (x) R 1 2"),
            Err(ProcessError::Format { what: "utime", .. })
        ));
        assert!(parse_stat("no name").is_err());
    }

    #[test]
    fn reads_the_boot_time() {
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nintr 5\nbtime 1795883956\nprocesses 9\n").ok(),
            Some(1_795_883_956)
        );
        assert!(parse_boot_time("cpu 1\n").is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_used_cpu_memory_and_files_since_it_started() {
        let s = read().expect("/proc is readable");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        assert!(s.resident_bytes > 0 && s.virtual_bytes >= s.resident_bytes);
        assert!(s.open_fds > 0 && s.max_fds >= s.open_fds);
        assert!(s.cpu_seconds >= 0.0);
        // Within a day before now (clock ticks round the start time down a little).
        assert!(s.start_time_seconds <= now + 1.0 && s.start_time_seconds > now - 86_400.0);
        let mut body = String::new();
        render(&mut body);
        assert!(body.contains("# TYPE process_cpu_seconds_total counter\n"));
        assert!(body.contains("\nprocess_open_fds "));
    }
}

//! What a running process holds, read from /proc: the leak checks of the soak, lifecycle and
//! bad-input tests compare these before and after. A process that is gone reads as zero.

use std::fs;

fn entries(dir: &str) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Open file descriptors of `pid`.
pub fn open_fds(pid: u32) -> usize {
    entries(&format!("/proc/{pid}/fd"))
}

/// Threads of `pid`.
pub fn threads(pid: u32) -> usize {
    entries(&format!("/proc/{pid}/task"))
}

/// Resident memory of `pid`, in KiB.
pub fn resident_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Mappings of `pid` whose line in /proc/PID/maps contains `marker` (a file name, say).
pub fn mappings_of(pid: u32, marker: &str) -> usize {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(marker))
        .count()
}

/// CPU time (user + system, in clock ticks) `pid` has used.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(end) = stat.rfind(')') else { return 0 };
    let f: Vec<&str> = stat[end + 2..].split(' ').collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let f = fs::File::open("/proc/self/status").unwrap();
        assert!(
            open_fds(me) >= 4,
            "stdin, stdout, stderr and the file just opened"
        );
        drop(f);
        assert!(threads(me) >= 1);
        assert!(resident_kib(me) > 0);
        assert!(mappings_of(me, "[stack]") >= 1);
    }

    #[test]
    fn a_process_that_is_gone_reads_as_zero() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!((open_fds(pid), threads(pid), resident_kib(pid)), (0, 0, 0));
    }
}

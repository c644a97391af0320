//! How much host memory this process can still take: the kernel's estimate
//! (`MemAvailable` in `/proc/meminfo`), lowered to the room left under the
//! container's cgroup limit when there is one (inside a container
//! `/proc/meminfo` describes the whole host).

use std::fs;

/// Bytes of host memory available now; `None` where the system does not say
/// (not Linux).
pub fn host_memory_available() -> Option<usize> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let available = meminfo_bytes(&meminfo, "MemAvailable")?;
    Some(match cgroup_headroom() {
        Some(room) => available.min(room),
        None => available,
    })
}

/// A `/proc/meminfo` field (given in kB) in bytes.
fn meminfo_bytes(meminfo: &str, field: &str) -> Option<usize> {
    let line = meminfo.lines().find(|l| l.split(':').next() == Some(field))?;
    let kb: usize = line.split(':').nth(1)?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb.saturating_mul(1024))
}

/// Limit minus usage of this process's memory cgroup (v2, else v1), when limited.
fn cgroup_headroom() -> Option<usize> {
    let read = |path: &str| fs::read_to_string(path).ok()?.trim().parse::<usize>().ok();
    let (limit, used) = match read("/sys/fs/cgroup/memory.max") {
        Some(limit) => (limit, read("/sys/fs/cgroup/memory.current")?),
        // v2 writes "max" when unlimited, which does not parse.
        None => (
            read("/sys/fs/cgroup/memory/memory.limit_in_bytes")?,
            read("/sys/fs/cgroup/memory/memory.usage_in_bytes")?,
        ),
    };
    Some(limit.saturating_sub(used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_are_read_in_bytes() {
        let info = "MemTotal:       24683584 kB\nMemFree:  100 kB\nMemAvailable:   21892684 kB\n";
        assert_eq!(meminfo_bytes(info, "MemAvailable"), Some(21892684 * 1024));
        assert_eq!(meminfo_bytes(info, "MemFree"), Some(100 * 1024));
        assert_eq!(meminfo_bytes(info, "Mem"), None);
    }

    #[test]
    fn this_machine_reports_some_memory() {
        if cfg!(target_os = "linux") {
            assert!(host_memory_available().is_some_and(|b| b > 0));
        }
    }
}

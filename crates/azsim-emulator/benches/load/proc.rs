//! What the load bench reads from /proc (CPU time per thread group, resident memory) and the
//! open-files limit it raises.

/// Raises the soft open-files limit to the hard one: each device is a socket on the client side
/// and another on the broker side, both in this process for the hub.
pub(super) fn raise_nofile(needed: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let soft = lim.current.unwrap_or(u64::MAX);
    if soft >= needed {
        return;
    }
    let new = Rlimit {
        current: lim.maximum,
        maximum: lim.maximum,
    };
    match setrlimit(Resource::Nofile, new) {
        Ok(()) => eprintln!(
            "load: raised the open-files soft limit from {soft} to {}",
            lim.maximum.map_or("unlimited".into(), |m| m.to_string())
        ),
        Err(e) => eprintln!("load: cannot raise the open-files limit ({soft}): {e}"),
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if now < needed {
        eprintln!(
            "load: warning: open-files limit {now} is below the ~{needed} this run needs; \
             raise it with `ulimit -n`"
        );
    }
}

/// CPU time (ns) of the threads of process `pid` (`self` for this one) whose name passes
/// `pick`, from `/proc/PID/task/*/schedstat` (0 where that is unavailable).
pub(super) fn cpu_ns(pid: &str, pick: impl Fn(&str) -> bool) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            if !pick(comm.trim_end()) {
                return None;
            }
            std::fs::read_to_string(t.path().join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Resident memory of process `pid` in KiB (`VmRSS`; 0 where unavailable).
pub(super) fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The load generator's threads: the main runtime's workers (tokio names them `tokio-rt-worker`).
pub(super) fn client_cpu_ns() -> u64 {
    cpu_ns("self", |c| c.starts_with("tokio-r"))
}

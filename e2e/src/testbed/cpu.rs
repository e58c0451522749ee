//! Where a test bed's machine spends its CPU: the time each program has used, read from
//! `/proc`, with the test bed's own processes told apart by cluster.

use std::collections::BTreeMap;

/// The CPU time every process on this machine had used at one moment, by pid.
#[derive(Clone, Debug, Default)]
pub struct Reading(BTreeMap<u32, Process>);

#[derive(Clone, Debug, PartialEq)]
struct Process {
    program: String,
    seconds: f64,
}

/// Reads every process's CPU time so far; a test bed's processes are named with their cluster
/// (`kube-apiserver cluster1`), found in their command lines.
pub fn read() -> Reading {
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut processes = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Reading(processes);
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue; // Not a process.
        };
        let dir = entry.path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue; // Gone since.
        };
        let Some((name, ticks)) = name_and_ticks(&stat) else {
            continue;
        };
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        let program = match cluster_in(&String::from_utf8_lossy(&cmdline)) {
            Some(cluster) => format!("{name} {cluster}"),
            None => program_of(name),
        };
        let seconds = ticks as f64 / per_second;
        processes.insert(pid, Process { program, seconds });
    }
    Reading(processes)
}

/// A kernel worker is named after the work it does at the moment (`kworker/u8:1-writeback`):
/// all are one program.
fn program_of(name: String) -> String {
    if name.starts_with("kworker/") {
        "kworker".into()
    } else {
        name
    }
}

/// What each program used between two readings, largest first; programs that used less than
/// 10 ms are left out. Processes are matched by pid, so one renamed in between is not counted
/// again from its start; one started in between counts whole, one that ended in between is
/// not seen.
pub fn used(before: &Reading, after: &Reading) -> Vec<(String, f64)> {
    let mut by_program = BTreeMap::<&str, f64>::new();
    for (pid, process) in &after.0 {
        let earlier = match before.0.get(pid) {
            // A smaller time is another process that took the same pid.
            Some(then) if then.seconds <= process.seconds => then.seconds,
            _ => 0.0,
        };
        *by_program.entry(&process.program).or_default() += process.seconds - earlier;
    }
    let mut used: Vec<(String, f64)> = by_program
        .into_iter()
        .filter(|(_, t)| *t >= 0.01)
        .map(|(program, t)| (program.to_string(), t))
        .collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    used
}

/// A process's name and its user and system clock ticks, from its `/proc/PID/stat`.
fn name_and_ticks(stat: &str) -> Option<(String, u64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((name, ticks))
}

/// The test bed cluster a command line belongs to: its state lives under `.../clusterN/`.
fn cluster_in(cmdline: &str) -> Option<&str> {
    let start = cmdline.find("/cluster")? + 1;
    let rest = &cmdline[start..];
    let end = rest.find('/')?;
    let cluster = &rest[..end];
    cluster["cluster".len()..]
        .chars()
        .all(|c| c.is_ascii_digit())
        .then_some(cluster)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_process_is_named_and_counted_from_its_stat() {
        let stat = "42 (kube-apiserver) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(
            super::name_and_ticks(stat),
            Some(("kube-apiserver".to_string(), 300))
        );
    }

    #[test]
    fn a_test_bed_process_is_told_by_its_cluster() {
        let cmdline =
            "kube-apiserver\0--tls-cert-file=/w/target/bench-testbed/cluster2/apiserver.crt";
        assert_eq!(super::cluster_in(cmdline), Some("cluster2"));
        assert_eq!(
            super::cluster_in("etcd\0--data-dir=/var/lib/clusterfoo/x"),
            None
        );
        assert_eq!(super::cluster_in("sleep\x00100"), None);
    }

    fn reading(processes: &[(u32, &str, f64)]) -> super::Reading {
        super::Reading(
            processes
                .iter()
                .map(|(pid, program, seconds)| {
                    let program = super::program_of(program.to_string());
                    (
                        *pid,
                        super::Process {
                            program,
                            seconds: *seconds,
                        },
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn use_is_counted_by_process_and_summed_by_program() {
        let before = reading(&[
            (1, "kworker/u8:1-writeback", 100.0),
            (2, "etcd", 50.0),
            (3, "etcd", 10.0),
            (4, "sleep", 30.0),
        ]);
        let after = reading(&[
            // Renamed by its work item: 1 s, not 101.
            (1, "kworker/u8:1-events_unbound", 101.0),
            (2, "etcd", 52.0),
            (3, "etcd", 10.5),
            // Pid 4 taken by a new process: counted whole.
            (4, "kwok", 0.25),
            // Started in between: counted whole.
            (5, "propagation", 3.0),
        ]);
        let used = super::used(&before, &after);
        assert_eq!(
            used,
            [
                ("propagation".to_string(), 3.0),
                ("etcd".to_string(), 2.5),
                ("kworker".to_string(), 1.0),
                ("kwok".to_string(), 0.25),
            ]
        );
    }

    #[test]
    fn this_process_is_read() {
        let reading = super::read();
        assert!(reading.0.contains_key(&std::process::id()));
    }
}

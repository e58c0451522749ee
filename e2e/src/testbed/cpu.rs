//! Where a test bed's machine spends its CPU: the time each program has used, read from
//! `/proc`, with the test bed's own processes told apart by cluster.

use std::collections::BTreeMap;

/// CPU seconds each program on this machine has used so far, by name; a test bed's processes
/// also by cluster (`kube-apiserver cluster1`), found in their command lines.
pub fn by_program() -> BTreeMap<String, f64> {
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut programs = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return programs;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue; // Not a process, or gone since.
        };
        let Some((name, ticks)) = name_and_ticks(&stat) else {
            continue;
        };
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        let program = match cluster_in(&String::from_utf8_lossy(&cmdline)) {
            Some(cluster) => format!("{name} {cluster}"),
            None => name,
        };
        *programs.entry(program).or_insert(0.0) += ticks as f64 / per_second;
    }
    programs
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

/// What each program used between two [`by_program`] readings, largest first; programs
/// that used less than 10 ms are left out.
pub fn used(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> Vec<(String, f64)> {
    let mut used: Vec<(String, f64)> = after
        .iter()
        .map(|(program, t)| {
            (
                program.clone(),
                t - before.get(program).copied().unwrap_or(0.0),
            )
        })
        .filter(|(_, t)| *t >= 0.01)
        .collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    used
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
}

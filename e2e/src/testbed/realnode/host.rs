//! What a real node makes on the host outside its own directory, and how to find and remove
//! it: cgroups (every v1 hierarchy and the v2 `unified` one), mounts, the pods' bridge, the
//! shims' sockets and a few files the kubelet and CNI write to fixed host paths.

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{
    mount::{MntFlags, umount2},
    sys::signal::{Signal, kill},
    unistd::Pid,
};

const CGROUP_MOUNTS: &str = "/sys/fs/cgroup";
/// Where containerd's shims put their sockets, whatever containerd's own state directory.
const SHIM_SOCKETS: &str = "/run/containerd/s";
/// Where the kubelet links container logs, whatever its own directories.
const CONTAINER_LOG_LINKS: &str = "/var/log/containers";
/// Where libcni caches the result of each attachment, whatever containerd's settings.
const CNI_RESULTS: &str = "/var/lib/cni/results";

/// The mount points of the cgroup hierarchies (v1 controllers and the v2 `unified` mount).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    mounts()
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| m.point)
        .filter(|p| p.starts_with(CGROUP_MOUNTS))
        .collect()
}

/// Creates cgroup `/<name>` in every hierarchy; the kubelet refuses to start until its
/// `cgroupRoot` exists in each. A new cpuset cgroup has no CPUs or memory nodes: it gets its
/// parent's.
pub fn create_cgroup(name: &str) -> anyhow::Result<()> {
    for hierarchy in cgroup_hierarchies() {
        let dir = hierarchy.join(name);
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create cgroup {}", dir.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let parent = hierarchy.join(file);
            if parent.exists() {
                let value = fs::read_to_string(&parent)?;
                fs::write(dir.join(file), value.trim())
                    .with_context(|| format!("cannot set {}/{file}", dir.display()))?;
            }
        }
    }
    Ok(())
}

/// The cgroups directly under the root of any hierarchy whose name starts with `prefix`.
pub fn cgroups_named(prefix: &str) -> Vec<PathBuf> {
    cgroup_hierarchies()
        .iter()
        .filter_map(|h| fs::read_dir(h).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect()
}

/// Kills (SIGKILL) every process in the cgroup trees `roots` and waits until they are empty
/// (10 s at most). A frozen cgroup is thawed first, or the signal would wait with it.
pub fn kill_cgroup_processes(roots: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids: Vec<i32> = roots.iter().flat_map(|r| processes_in(r)).collect();
        if pids.is_empty() || Instant::now() > deadline {
            if !pids.is_empty() {
                tracing::warn!(?pids, "processes in the real nodes' cgroups did not die");
            }
            return;
        }
        for root in roots {
            thaw(root);
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn processes_in(root: &Path) -> Vec<i32> {
    subtree(root)
        .iter()
        .filter_map(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

fn thaw(root: &Path) {
    for dir in subtree(root) {
        let state = dir.join("freezer.state");
        if fs::read_to_string(&state).is_ok_and(|s| s.trim() != "THAWED") {
            let _ = fs::write(&state, "THAWED");
        }
    }
}

/// `root` and every cgroup below it, deepest first.
fn subtree(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        found.push(dir);
    }
    found.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    found
}

/// Removes the cgroup trees `roots` (they must hold no process). Only empty directories are
/// removed: a cgroup is a directory whose files the kernel owns.
pub fn remove_cgroups(roots: &[PathBuf]) -> anyhow::Result<()> {
    for root in roots {
        for dir in subtree(root) {
            match fs::remove_dir(&dir) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(e)
                        .with_context(|| format!("cannot remove cgroup {}", dir.display()));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

struct Mount {
    point: PathBuf,
    fstype: String,
}

/// This process's mounts, from `/proc/self/mountinfo` (the test bed shares the host's mount
/// namespace with the kubelets it starts).
fn mounts() -> Vec<Mount> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let separator = fields.iter().position(|f| *f == "-")?;
            Some(Mount {
                point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: fields.get(separator + 1)?.to_string(),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|m| m.point)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Detaches every mount at or below `dir` (rootfs overlays, shm, network namespaces, pod
/// volumes, the kubelet's bind mount of its own root), repeating while some remain: a mount
/// can be stacked on another.
pub fn unmount_all_under(dir: &Path) -> anyhow::Result<()> {
    for _ in 0..10 {
        let points = mounts_under(dir);
        if points.is_empty() {
            return Ok(());
        }
        for point in points {
            match umount2(&point, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot unmount {}", point.display()));
                }
            }
        }
    }
    bail!(
        "mounts under {} remain: {:?}",
        dir.display(),
        mounts_under(dir)
    )
}

/// Network interfaces whose name starts with `prefix` (the pods' bridges).
pub fn links_named(prefix: &str) -> Vec<String> {
    fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

pub fn delete_link(name: &str) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(["link", "delete", name])
        .output()
        .context("cannot run `ip` (iproute2) to delete a bridge")?;
    if !output.status.success() && Path::new("/sys/class/net").join(name).exists() {
        bail!(
            "cannot delete network interface {name}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The Unix socket paths `pid` listens on (its socket inodes looked up in `/proc/net/unix`):
/// a shim's socket lives in a fixed host directory and stays behind if the shim is killed.
pub fn shim_socket_paths(pid: i32) -> Vec<PathBuf> {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let table = fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode = fields.get(6)?;
            let path = fields.get(7)?;
            (inodes.iter().any(|i| i == inode) && path.starts_with(SHIM_SOCKETS))
                .then(|| PathBuf::from(path))
        })
        .collect()
}

/// Files the kubelets and libcni wrote in fixed host directories for the nodes in `dir`: links
/// to their container logs (they point into `dir`) and cached CNI results of their networks
/// (named `prefix...`) and of containerd's own loopback network (named after the sandbox).
pub fn host_files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let sandboxes = sandbox_ids(dir);
    let log_links = fs::read_dir(CONTAINER_LOG_LINKS)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| fs::read_link(p).is_ok_and(|target| target.starts_with(dir)));
    let cni_results = fs::read_dir(CNI_RESULTS)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(prefix)
                || name
                    .strip_prefix("cni-loopback-")
                    .and_then(|rest| rest.strip_suffix("-lo"))
                    .is_some_and(|id| sandboxes.iter().any(|s| s == id))
        })
        .map(|e| e.path());
    log_links.chain(cni_results).collect()
}

/// The ids of the pod sandboxes the containerds of the nodes in `dir` (a test bed, a cluster
/// or a node directory) have known.
fn sandbox_ids(dir: &Path) -> Vec<String> {
    const SANDBOXES: &str = "containerd/root/io.containerd.grpc.v1.cri/sandboxes";
    let children = |d: &Path| -> Vec<PathBuf> {
        fs::read_dir(d)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect()
    };
    let clusters = children(dir);
    let nodes: Vec<PathBuf> = clusters.iter().flat_map(|c| children(c)).collect();
    std::iter::once(dir.to_path_buf())
        .chain(clusters)
        .chain(nodes)
        .flat_map(|d| children(&d.join(SANDBOXES)))
        .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(unescape(r"/plain/path"), "/plain/path");
        assert_eq!(unescape(r"/trailing\04"), r"/trailing\04");
    }

    #[test]
    fn subtrees_list_the_deepest_first() {
        let root = std::env::temp_dir().join(format!("subtree-{}", std::process::id()));
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir_all(root.join("c")).unwrap();
        let found = subtree(&root);
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(found.first(), Some(&root.join("a/b")));
        assert_eq!(found.last(), Some(&root));
        assert_eq!(found.len(), 4);
    }
}

//! Where the test bed finds its binaries (built by `make tools`).

use std::path::{Path, PathBuf};

use anyhow::bail;

/// Environment variable naming the directory of the tool binaries.
pub const TOOLS_BIN_ENV: &str = "TESTBED_TOOLS_BIN";

/// Paths of the binaries the test bed runs.
#[derive(Clone, Debug)]
pub struct Tools {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kwok: PathBuf,
    pub kubelet: PathBuf,
    /// The S3-compatible store of Argo's artifacts (a test fixture, `e2e/tools/artifact-store`).
    pub artifact_store: PathBuf,
}

impl Tools {
    /// The tools in `$TESTBED_TOOLS_BIN`, else in `target/tools/bin` of the workspace.
    pub fn locate() -> anyhow::Result<Self> {
        let dir = std::env::var_os(TOOLS_BIN_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| super::workspace_target_dir().join("tools/bin"));
        Self::in_dir(&dir)
    }

    /// The tools in `dir`; a clear error names what is missing and how to build it.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        let find = |name: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                bail!(
                    "{name} not found in {} (run `make tools`, or set {TOOLS_BIN_ENV})",
                    dir.display()
                )
            }
        };
        Ok(Self {
            etcd: find("etcd")?,
            kube_apiserver: find("kube-apiserver")?,
            kube_controller_manager: find("kube-controller-manager")?,
            kube_scheduler: find("kube-scheduler")?,
            kwok: find("kwok")?,
            kubelet: find("kubelet")?,
            artifact_store: find(super::artifact_store::PROGRAM)?,
        })
    }
}

/// A program of the machine (e.g. Debian's `containerd`), found in `PATH`.
pub fn system_program(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!("{name} not found in PATH (real nodes need it: run `make packages`)")
        })
}

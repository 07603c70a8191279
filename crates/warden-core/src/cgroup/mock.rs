//! A fake cgroupfs in a temporary directory (after firecracker's
//! `MockCgroupFs`): the hierarchies of a pure v2, hybrid or pure v1 host,
//! with the interface files the kernel would create in each cgroup. Unlike
//! the kernel it neither accumulates `cgroup.subtree_control` writes nor
//! removes directories holding files; tests that need that run as root
//! against the real thing (tests/cgroup_root.rs).

use std::path::{Path, PathBuf};

use tempfile::TempDir;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockKind {
    V2,
    Hybrid,
    V1,
}

pub struct MockCgroupFs {
    /// Keeps the tree alive; removed on drop.
    _tmp: TempDir,
    /// The fake /sys/fs/cgroup (canonical, as detection reports it).
    mount: PathBuf,
    kind: MockKind,
}

const V2_ROOT_CONTROLLERS: &str = "cpuset cpu io memory hugetlb pids rdma misc\n";

/// v1 hierarchies of the mock: directory name, and symlinks to it.
const V1_HIERARCHIES: &[(&str, &[&str])] = &[
    ("memory", &[]),
    ("pids", &[]),
    ("cpu,cpuacct", &["cpu", "cpuacct"]),
    ("freezer", &[]),
    ("blkio", &[]),
    ("cpuset", &[]),
    ("systemd", &[]),
];

impl MockCgroupFs {
    pub fn new(kind: MockKind) -> MockCgroupFs {
        let tmp = tempfile::tempdir().unwrap();
        let mount = std::fs::canonicalize(tmp.path()).unwrap().join("cgroup");
        std::fs::create_dir(&mount).unwrap();
        let m = MockCgroupFs {
            _tmp: tmp,
            mount,
            kind,
        };
        match kind {
            MockKind::V2 => m.v2_root(&m.mount, V2_ROOT_CONTROLLERS),
            MockKind::Hybrid | MockKind::V1 => {
                for (name, links) in V1_HIERARCHIES {
                    let dir = m.mount.join(name);
                    std::fs::create_dir(&dir).unwrap();
                    touch(&dir.join("cgroup.procs"), "");
                    touch(&dir.join("tasks"), "");
                    for link in *links {
                        std::os::unix::fs::symlink(name, m.mount.join(link)).unwrap();
                    }
                }
                if kind == MockKind::Hybrid {
                    let unified = m.mount.join("unified");
                    std::fs::create_dir(&unified).unwrap();
                    m.v2_root(&unified, "hugetlb\n");
                }
            }
        }
        m
    }

    fn v2_root(&self, dir: &Path, controllers: &str) {
        touch(&dir.join("cgroup.controllers"), controllers);
        touch(&dir.join("cgroup.subtree_control"), "");
        touch(&dir.join("cgroup.procs"), "");
        touch(&dir.join("cpu.stat"), "usage_usec 0\n");
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The hierarchy directory called `hier` (`unified`, `memory`,
    /// `cpu,cpuacct`...), or the mount itself for "" (pure v2).
    pub fn hier(&self, hier: &str) -> PathBuf {
        if hier.is_empty() {
            self.mount.clone()
        } else {
            self.mount.join(hier)
        }
    }

    /// A cgroup path `rel` in hierarchy `hier`.
    pub fn path(&self, hier: &str, rel: &str) -> PathBuf {
        self.hier(hier).join(rel.trim_start_matches('/'))
    }

    pub fn read(&self, hier: &str, rel: &str, file: &str) -> String {
        std::fs::read_to_string(self.path(hier, rel).join(file)).unwrap()
    }

    pub fn write(&self, hier: &str, rel: &str, file: &str, data: &str) {
        std::fs::write(self.path(hier, rel).join(file), data).unwrap()
    }

    /// Creates cgroup `rel` (and its parents) in every hierarchy, with the
    /// files the kernel would put there; existing files are kept.
    pub fn cgroup(&self, rel: &str) {
        let mut cur = String::new();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            cur.push('/');
            cur.push_str(part);
            match self.kind {
                MockKind::V2 => self.v2_cgroup("", &cur, true),
                MockKind::Hybrid | MockKind::V1 => {
                    if self.kind == MockKind::Hybrid {
                        self.v2_cgroup("unified", &cur, false);
                    }
                    for (name, _) in V1_HIERARCHIES {
                        self.v1_cgroup(name, &cur);
                    }
                }
            }
        }
    }

    fn v2_cgroup(&self, hier: &str, rel: &str, controllers: bool) {
        let d = self.path(hier, rel);
        std::fs::create_dir_all(&d).unwrap();
        let ctl = if controllers {
            "cpu io memory pids\n"
        } else {
            ""
        };
        for (file, data) in [
            ("cgroup.procs", ""),
            ("cgroup.controllers", ctl),
            ("cgroup.subtree_control", ""),
            ("cgroup.events", "populated 0\nfrozen 0\n"),
            ("cgroup.freeze", "0\n"),
            ("cgroup.kill", ""),
            ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
        ] {
            touch(&d.join(file), data);
        }
        if controllers {
            for (file, data) in [
                ("memory.max", "max\n"),
                ("memory.swap.max", "max\n"),
                ("memory.current", "0\n"),
                ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"),
                ("pids.max", "max\n"),
                ("pids.current", "0\n"),
                ("pids.events", "max 0\n"),
                ("cpu.max", "max 100000\n"),
                ("io.stat", ""),
            ] {
                touch(&d.join(file), data);
            }
        }
    }

    fn v1_cgroup(&self, hier: &str, rel: &str) {
        let d = self.path(hier, rel);
        std::fs::create_dir_all(&d).unwrap();
        touch(&d.join("cgroup.procs"), "");
        touch(&d.join("tasks"), "");
        let files: &[(&str, &str)] = match hier {
            "memory" => &[
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.memsw.limit_in_bytes", "9223372036854771712\n"),
                ("memory.usage_in_bytes", "0\n"),
                ("memory.failcnt", "0\n"),
                ("memory.use_hierarchy", "1\n"),
            ],
            "pids" => &[
                ("pids.max", "max\n"),
                ("pids.current", "0\n"),
                ("pids.events", "max 0\n"),
            ],
            "cpu,cpuacct" => &[
                ("cpu.cfs_period_us", "100000\n"),
                ("cpu.cfs_quota_us", "-1\n"),
                ("cpuacct.usage", "0\n"),
            ],
            "freezer" => &[("freezer.state", "THAWED\n")],
            "blkio" => &[
                ("blkio.throttle.io_service_bytes", "Total 0\n"),
                ("blkio.throttle.io_service_bytes_recursive", "Total 0\n"),
            ],
            _ => &[],
        };
        for (file, data) in files {
            touch(&d.join(file), data);
        }
    }
}

fn touch(path: &Path, data: &str) {
    if !path.exists() {
        std::fs::write(path, data).unwrap();
    }
}

//! Unit tests against a fake cgroupfs (no root needed).

use std::path::PathBuf;

use super::mock::{MockCgroupFs, MockKind};
use super::*;

const ROOT: &str = "/warden";

fn manager(m: &MockCgroupFs, layout: Option<Layout>) -> Manager {
    Manager::with_own_cgroup(m.mount(), ROOT, layout, Some("/")).unwrap()
}

fn all_limits() -> Limits {
    Limits {
        memory_max: Some(256 << 20),
        pids_max: Some(64),
        cpu_max: Some(1.5),
    }
}

// ---- detection -------------------------------------------------------------

#[test]
fn detects_pure_v2() {
    let m = MockCgroupFs::new(MockKind::V2);
    let mgr = manager(&m, None);
    assert_eq!(mgr.layout(), Layout::V2);
    assert_eq!(mgr.hierarchy_dirs(), vec![m.mount().to_owned()]);
}

#[test]
fn detects_hybrid_with_comounted_cpu_and_symlinks() {
    let m = MockCgroupFs::new(MockKind::Hybrid);
    let mgr = manager(&m, None);
    assert_eq!(mgr.layout(), Layout::Hybrid);
    let names: Vec<String> = mgr
        .hierarchy_dirs()
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // cpu and cpuacct (symlinks) count once; cpuset and name=systemd unused.
    assert_eq!(
        names,
        [
            "unified",
            "blkio",
            "cpu,cpuacct",
            "freezer",
            "memory",
            "pids"
        ]
    );
    let cpu = mgr.v1.iter().find(|h| h.has(Controller::Cpu)).unwrap();
    assert!(cpu.has(Controller::Cpuacct));
}

#[test]
fn detects_pure_v1() {
    let m = MockCgroupFs::new(MockKind::V1);
    let mgr = manager(&m, None);
    assert_eq!(mgr.layout(), Layout::V1);
    assert_eq!(mgr.hierarchy_dirs().len(), 5);
    assert!(mgr.agents().events_file().is_none());
}

#[test]
fn detects_separate_cpu_and_cpuacct_mounts() {
    let m = MockCgroupFs::new(MockKind::V1);
    // Replace the co-mount by two hierarchies, as on the hosts we run.
    for link in ["cpu", "cpuacct"] {
        std::fs::remove_file(m.hier(link)).unwrap();
        std::fs::create_dir(m.hier(link)).unwrap();
        std::fs::write(m.hier(link).join("cgroup.procs"), "").unwrap();
    }
    std::fs::remove_dir(m.hier("cpu,cpuacct")).unwrap_or_else(|_| {
        std::fs::remove_dir_all(m.hier("cpu,cpuacct")).unwrap();
    });
    let mgr = manager(&m, None);
    let cpu = mgr.v1.iter().find(|h| h.has(Controller::Cpu)).unwrap();
    let acct = mgr.v1.iter().find(|h| h.has(Controller::Cpuacct)).unwrap();
    assert_ne!(cpu.dir, acct.dir);
    assert_eq!(mgr.v1.len(), 6);
}

#[test]
fn forced_layouts() {
    let hybrid = MockCgroupFs::new(MockKind::Hybrid);
    let v1 = manager(&hybrid, Some(Layout::V1));
    assert_eq!(v1.layout(), Layout::V1);
    assert!(!v1.hierarchy_dirs().iter().any(|d| d.ends_with("unified")));
    let v2 = manager(&hybrid, Some(Layout::V2));
    assert_eq!(v2.layout(), Layout::V2);
    assert_eq!(v2.hierarchy_dirs(), vec![hybrid.hier("unified")]);

    let pure_v1 = MockCgroupFs::new(MockKind::V1);
    for l in [Layout::Hybrid, Layout::V2] {
        let e = Manager::with_own_cgroup(pure_v1.mount(), ROOT, Some(l), None).unwrap_err();
        assert!(e.to_string().contains("layout"), "{e}");
    }
    let pure_v2 = MockCgroupFs::new(MockKind::V2);
    assert!(Manager::with_own_cgroup(pure_v2.mount(), ROOT, Some(Layout::V1), None).is_err());
}

#[test]
fn empty_mount_has_no_hierarchy() {
    let tmp = tempfile::tempdir().unwrap();
    let e = Manager::with_own_cgroup(tmp.path(), ROOT, None, None).unwrap_err();
    assert!(matches!(e, CgroupError::NoHierarchy(_)), "{e}");
}

#[test]
fn a_single_v1_hierarchy_is_not_a_mount() {
    let m = MockCgroupFs::new(MockKind::V1);
    assert!(Manager::with_own_cgroup(&m.hier("memory"), ROOT, None, None).is_err());
}

// ---- paths -----------------------------------------------------------------

#[test]
fn paths_and_root_resolution() {
    let m = MockCgroupFs::new(MockKind::V2);
    let mgr = manager(&m, None);
    assert_eq!(mgr.root(), "/warden");
    assert_eq!(mgr.agents().path(), "/warden/agents");
    assert_eq!(mgr.agent("web").path(), "/warden/agents/web");
    assert_eq!(
        mgr.agents().events_file(),
        Some(m.path("", "/warden/agents/cgroup.events"))
    );

    let own = "/system.slice/warden.service";
    let mgr = Manager::with_own_cgroup(m.mount(), "auto", None, Some(own)).unwrap();
    assert_eq!(mgr.root(), own);
    assert!(mgr.r_is_own());
    let mgr = Manager::with_own_cgroup(m.mount(), "auto", None, Some("/")).unwrap();
    assert_eq!(mgr.root(), "/warden");
    assert!(!mgr.r_is_own());
}

#[test]
fn invalid_agent_names_never_escape() {
    let m = MockCgroupFs::new(MockKind::V2);
    let mgr = manager(&m, None);
    for bad in ["", "..", ".x", "a/b", "../../etc", &"x".repeat(65)] {
        assert!(!valid_agent_name(bad), "{bad:?}");
        let cg = mgr.agent(bad);
        assert!(cg.freeze().is_err() && cg.kill().is_err() && cg.populated().is_err());
        assert!(mgr.create_agent(bad, &Limits::default()).is_err());
    }
    for good in ["web", "agent-1", "a_b.c"] {
        assert!(valid_agent_name(good), "{good:?}");
    }
}

// ---- limits ----------------------------------------------------------------

#[test]
fn v2_limits_written() {
    let m = MockCgroupFs::new(MockKind::V2);
    let mgr = manager(&m, None);
    m.cgroup("/warden/agents/web");
    m.write(
        "",
        "/warden/agents",
        "cgroup.subtree_control",
        "cpu io memory pids\n",
    );
    assert!(mgr.unenforceable(&all_limits()).is_empty());
    mgr.create_agent("web", &all_limits()).unwrap();
    let f = |file| m.read("", "/warden/agents/web", file);
    assert_eq!(f("memory.max"), "268435456");
    assert_eq!(f("memory.swap.max"), "0");
    assert_eq!(f("pids.max"), "64");
    assert_eq!(f("cpu.max"), "150000 100000");
}

#[test]
fn v1_limits_written() {
    for kind in [MockKind::V1, MockKind::Hybrid] {
        let m = MockCgroupFs::new(kind);
        let mgr = manager(&m, None);
        m.cgroup("/warden/agents/web");
        assert!(mgr.unenforceable(&all_limits()).is_empty());
        mgr.create_agent("web", &all_limits()).unwrap();
        let rel = "/warden/agents/web";
        assert_eq!(m.read("memory", rel, "memory.limit_in_bytes"), "268435456");
        assert_eq!(
            m.read("memory", rel, "memory.memsw.limit_in_bytes"),
            "268435456"
        );
        assert_eq!(m.read("pids", rel, "pids.max"), "64");
        assert_eq!(m.read("cpu,cpuacct", rel, "cpu.cfs_period_us"), "100000");
        assert_eq!(m.read("cpu,cpuacct", rel, "cpu.cfs_quota_us"), "150000");
        if kind == MockKind::Hybrid {
            assert!(m.path("unified", rel).is_dir());
        }
    }
}

#[test]
fn only_asked_limits_are_written() {
    let m = MockCgroupFs::new(MockKind::V1);
    let mgr = manager(&m, None);
    m.cgroup("/warden/agents/web");
    let limits = Limits {
        pids_max: Some(5),
        ..Limits::default()
    };
    mgr.create_agent("web", &limits).unwrap();
    let rel = "/warden/agents/web";
    assert_eq!(m.read("pids", rel, "pids.max"), "5");
    assert_eq!(m.read("cpu,cpuacct", rel, "cpu.cfs_quota_us"), "-1\n");
    assert_eq!(
        m.read("memory", rel, "memory.limit_in_bytes"),
        "9223372036854771712\n"
    );
}

#[test]
fn bad_limits_refused() {
    let m = MockCgroupFs::new(MockKind::V1);
    let mgr = manager(&m, None);
    for limits in [
        Limits {
            cpu_max: Some(0.0),
            ..Limits::default()
        },
        Limits {
            cpu_max: Some(f64::NAN),
            ..Limits::default()
        },
        Limits {
            pids_max: Some(0),
            ..Limits::default()
        },
    ] {
        assert!(mgr.create_agent("web", &limits).is_err(), "{limits:?}");
    }
    assert_eq!(quota_us(0.0001), 1000);
    assert_eq!(quota_us(2.0), 200_000);
}

#[test]
fn v2_unenforceable_follows_controllers() {
    let m = MockCgroupFs::new(MockKind::V2);
    let mgr = manager(&m, None);
    // Before setup: what the root offers for R.
    m.write("", "", "cgroup.controllers", "cpu io\n");
    assert_eq!(
        mgr.unenforceable(&all_limits()),
        vec!["memory_max", "pids_max"]
    );
    // After setup: what R/agents has enabled for its children.
    m.cgroup("/warden/agents");
    m.write("", "/warden/agents", "cgroup.subtree_control", "memory\n");
    assert_eq!(
        mgr.unenforceable(&all_limits()),
        vec!["pids_max", "cpu_max"]
    );
    assert!(mgr.unenforceable(&Limits::default()).is_empty());
}

#[test]
fn unified_only_v2_enforces_nothing() {
    let m = MockCgroupFs::new(MockKind::Hybrid);
    let mgr = manager(&m, Some(Layout::V2));
    m.cgroup("/warden/agents");
    assert_eq!(
        mgr.unenforceable(&all_limits()),
        vec!["memory_max", "pids_max", "cpu_max"]
    );
}

#[test]
fn v1_missing_controller_is_unenforceable() {
    let m = MockCgroupFs::new(MockKind::V1);
    std::fs::remove_dir_all(m.hier("pids")).unwrap();
    let mgr = manager(&m, None);
    assert_eq!(mgr.unenforceable(&all_limits()), vec!["pids_max"]);
    m.cgroup("/warden/agents/web");
    // The caller decided to run anyway: the other limits still apply.
    mgr.create_agent("web", &all_limits()).unwrap();
    assert_eq!(
        m.read("memory", "/warden/agents/web", "memory.limit_in_bytes"),
        "268435456"
    );
}

#[test]
fn hybrid_read_only_hierarchies_are_skipped() {
    // As inside systemd-nspawn on a hybrid host: v1 read-only, unified writable.
    let m = MockCgroupFs::new(MockKind::Hybrid);
    let mgr = manager(&m, None);
    for h in &mgr.v1 {
        if h.has(Controller::Memory) || h.has(Controller::Freezer) {
            h.set_read_only();
        }
    }
    assert_eq!(mgr.unenforceable(&all_limits()), vec!["memory_max"]);
    m.cgroup("/warden/agents/web");
    mgr.setup().unwrap();
    let cg = mgr.create_agent("web", &all_limits()).unwrap();
    // Membership skips the read-only hierarchies: unified + pids, cpu, blkio.
    assert_eq!(cg.join_fds().unwrap().len(), 4);
    assert_eq!(
        m.read("memory", "/warden/agents/web", "memory.limit_in_bytes"),
        "9223372036854771712\n"
    );
    // Freezing still works, through unified.
    cg.freeze().unwrap();
    assert_eq!(
        m.read("unified", "/warden/agents/web", "cgroup.freeze"),
        "1"
    );
}

#[test]
fn pure_v1_needs_a_writable_freezer() {
    let m = MockCgroupFs::new(MockKind::V1);
    let mgr = manager(&m, None);
    mgr.v1
        .iter()
        .find(|h| h.has(Controller::Freezer))
        .unwrap()
        .set_read_only();
    let e = mgr.setup().unwrap_err();
    assert!(e.to_string().contains("freezer"), "{e}");

    let m = MockCgroupFs::new(MockKind::V1);
    std::fs::remove_dir_all(m.hier("freezer")).unwrap();
    assert!(manager(&m, None).setup().is_err());
}

// ---- setup, membership -----------------------------------------------------

#[test]
fn setup_creates_r_and_agents_everywhere() {
    let m = MockCgroupFs::new(MockKind::Hybrid);
    let mgr = manager(&m, None);
    mgr.setup().unwrap();
    for d in mgr.hierarchy_dirs() {
        assert!(d.join("warden/agents").is_dir(), "{}", d.display());
    }
    assert!(!m.path("cpuset", "/warden").exists());
    assert!(!m.path("systemd", "/warden").exists());
    assert!(mgr.existing_agents().unwrap().is_empty());
    m.cgroup("/warden/agents/b");
    std::fs::create_dir(m.path("memory", "/warden/agents/a")).unwrap();
    assert_eq!(mgr.existing_agents().unwrap(), vec!["a", "b"]);
}

#[test]
fn v2_setup_enables_controllers_on_r_and_agents() {
    let m = MockCgroupFs::new(MockKind::V2);
    let mgr = manager(&m, None);
    m.cgroup("/warden/agents");
    mgr.setup().unwrap();
    // The mock keeps only the last write; the kernel would hold all four.
    assert_eq!(
        m.read("", "/warden/agents", "cgroup.subtree_control"),
        "+pids"
    );
    assert_eq!(m.read("", "/warden", "cgroup.subtree_control"), "+pids");
}

#[test]
fn join_fds_one_per_hierarchy() {
    let m = MockCgroupFs::new(MockKind::Hybrid);
    let mgr = manager(&m, None);
    m.cgroup("/warden/agents/web");
    assert_eq!(mgr.agent("web").join_fds().unwrap().len(), 6);
    let v1 = manager(&m, Some(Layout::V1));
    assert_eq!(v1.agent("web").join_fds().unwrap().len(), 5);
    let v2 = manager(&m, Some(Layout::V2));
    assert_eq!(v2.agent("web").join_fds().unwrap().len(), 1);
    // A cgroup that does not exist cannot be joined.
    assert!(mgr.agent("nope").join_fds().is_err());
}

#[test]
fn add_pid_writes_every_hierarchy() {
    let m = MockCgroupFs::new(MockKind::Hybrid);
    let mgr = manager(&m, None);
    m.cgroup("/warden/agents/web");
    mgr.agent("web").add_pid(4242).unwrap();
    for h in [
        "unified",
        "memory",
        "pids",
        "cpu,cpuacct",
        "freezer",
        "blkio",
    ] {
        assert_eq!(
            m.read(h, "/warden/agents/web", "cgroup.procs"),
            "4242",
            "{h}"
        );
    }
}

// ---- freeze, kill, populated, procs ----------------------------------------

#[test]
fn v2_and_hybrid_freeze_through_cgroup_freeze() {
    for (kind, hier) in [(MockKind::V2, ""), (MockKind::Hybrid, "unified")] {
        let m = MockCgroupFs::new(kind);
        let mgr = manager(&m, None);
        m.cgroup("/warden/agents");
        let cg = mgr.agents();
        cg.freeze().unwrap();
        assert_eq!(m.read(hier, "/warden/agents", "cgroup.freeze"), "1");
        assert!(!cg.is_frozen().unwrap());
        m.write(
            hier,
            "/warden/agents",
            "cgroup.events",
            "populated 1\nfrozen 1\n",
        );
        assert!(cg.is_frozen().unwrap());
        assert!(cg.populated().unwrap());
        cg.thaw().unwrap();
        assert_eq!(m.read(hier, "/warden/agents", "cgroup.freeze"), "0");
        if kind == MockKind::Hybrid {
            assert_eq!(
                m.read("freezer", "/warden/agents", "freezer.state"),
                "THAWED\n"
            );
        }
        cg.kill().unwrap();
        assert_eq!(m.read(hier, "/warden/agents", "cgroup.kill"), "1");
    }
}

#[test]
fn hybrid_falls_back_to_the_v1_freezer_before_5_2() {
    let m = MockCgroupFs::new(MockKind::Hybrid);
    let mgr = manager(&m, None);
    m.cgroup("/warden/agents");
    std::fs::remove_file(m.path("unified", "/warden/agents").join("cgroup.freeze")).unwrap();
    m.write(
        "unified",
        "/warden/agents",
        "cgroup.events",
        "populated 0\n",
    );
    let cg = mgr.agents();
    cg.freeze().unwrap();
    assert_eq!(
        m.read("freezer", "/warden/agents", "freezer.state"),
        "FROZEN"
    );
    assert!(cg.is_frozen().unwrap());
}

#[test]
fn v1_freezer_states() {
    let m = MockCgroupFs::new(MockKind::V1);
    let mgr = manager(&m, None);
    m.cgroup("/warden/agents/web");
    let cg = mgr.agents();
    cg.freeze().unwrap();
    assert_eq!(
        m.read("freezer", "/warden/agents", "freezer.state"),
        "FROZEN"
    );
    m.write("freezer", "/warden/agents", "freezer.state", "FREEZING\n");
    assert!(!cg.is_frozen().unwrap());
    m.write("freezer", "/warden/agents", "freezer.state", "FROZEN\n");
    assert!(cg.is_frozen().unwrap());
    m.write("freezer", "/warden/agents/web", "freezer.state", "FROZEN\n");
    cg.thaw().unwrap();
    // Thaw reaches a child frozen on its own too.
    assert_eq!(
        m.read("freezer", "/warden/agents", "freezer.state"),
        "THAWED"
    );
    assert_eq!(
        m.read("freezer", "/warden/agents/web", "freezer.state"),
        "THAWED"
    );
}

#[test]
fn v2_kill_of_missing_cgroup_is_a_no_op() {
    let m = MockCgroupFs::new(MockKind::V2);
    let mgr = manager(&m, None);
    mgr.agent("gone").kill().unwrap();
    assert!(!mgr.agent("gone").populated().unwrap());
    // An existing cgroup without cgroup.kill (< 5.14) and no member: the
    // fallback walk finds nobody to signal.
    m.cgroup("/warden/agents/old");
    std::fs::remove_file(m.path("", "/warden/agents/old/cgroup.kill")).unwrap();
    mgr.agent("old").kill().unwrap();
}

#[test]
fn procs_are_recursive_deduplicated_sorted() {
    let m = MockCgroupFs::new(MockKind::V1);
    let mgr = manager(&m, None);
    m.cgroup("/warden/agents/a");
    m.cgroup("/warden/agents/b/sub");
    m.write("freezer", "/warden/agents/a", "cgroup.procs", "30\n10\n");
    m.write("memory", "/warden/agents/a", "cgroup.procs", "10\n30\n");
    m.write("pids", "/warden/agents/b/sub", "cgroup.procs", "20\n");
    assert_eq!(mgr.agents().procs().unwrap(), vec![10, 20, 30]);
    assert!(mgr.agents().populated().unwrap());
    assert!(!mgr.agent("c").populated().unwrap());
    // v1 remove refuses while populated.
    assert!(mgr.agent("a").remove().is_err());
}

#[test]
fn v2_procs_and_populated() {
    let m = MockCgroupFs::new(MockKind::V2);
    let mgr = manager(&m, None);
    m.cgroup("/warden/agents/a/x");
    m.write("", "/warden/agents/a/x", "cgroup.procs", "7\n");
    m.write("", "/warden/agents", "cgroup.procs", "3\n");
    assert_eq!(mgr.agents().procs().unwrap(), vec![3, 7]);
    m.write(
        "",
        "/warden/agents/a",
        "cgroup.events",
        "populated 1\nfrozen 0\n",
    );
    assert!(mgr.agent("a").populated().unwrap());
    assert!(mgr.agent("a").remove().is_err());
}

// ---- stats -----------------------------------------------------------------

#[test]
fn v2_stats_parsed() {
    let m = MockCgroupFs::new(MockKind::V2);
    let mgr = manager(&m, None);
    let rel = "/warden/agents/web";
    m.cgroup(rel);
    m.write("", rel, "cpu.stat", "usage_usec 1500\nuser_usec 1000\n");
    m.write("", rel, "memory.current", "4096\n");
    m.write("", rel, "pids.current", "3\n");
    m.write(
        "",
        rel,
        "io.stat",
        "8:0 rbytes=1 wbytes=512 rios=1 wios=1\n",
    );
    m.write("", rel, "memory.events", "low 0\nhigh 0\nmax 4\noom 1\n");
    m.write("", rel, "pids.events", "max 2\n");
    assert_eq!(
        mgr.agent("web").stats().unwrap(),
        Stats {
            cpu_usage_usec: Some(1500),
            memory_current: Some(4096),
            pids_current: Some(3),
            io_write_bytes: Some(512),
            memory_events_max: Some(4),
            pids_events_max: Some(2),
            cpu_stall_usec: None,
        }
    );
}

#[test]
fn v2_stats_without_controllers() {
    // The unified mount of a hybrid host: only cpu.stat, pids by counting.
    let m = MockCgroupFs::new(MockKind::Hybrid);
    let mgr = manager(&m, Some(Layout::V2));
    let rel = "/warden/agents/web";
    m.cgroup(rel);
    m.write("unified", rel, "cpu.stat", "usage_usec 99\n");
    m.write("unified", rel, "cgroup.procs", "5\n6\n");
    assert_eq!(
        mgr.agent("web").stats().unwrap(),
        Stats {
            cpu_usage_usec: Some(99),
            pids_current: Some(2),
            ..Stats::default()
        }
    );
}

#[test]
fn v1_and_hybrid_stats_parsed() {
    for kind in [MockKind::V1, MockKind::Hybrid] {
        let m = MockCgroupFs::new(kind);
        let mgr = manager(&m, None);
        let rel = "/warden/agents/web";
        m.cgroup(rel);
        m.write("cpu,cpuacct", rel, "cpuacct.usage", "2500000\n");
        m.write("memory", rel, "memory.usage_in_bytes", "8192\n");
        m.write("memory", rel, "memory.failcnt", "3\n");
        m.write("pids", rel, "pids.current", "4\n");
        m.write("pids", rel, "pids.events", "max 1\n");
        m.write(
            "blkio",
            rel,
            "blkio.throttle.io_service_bytes_recursive",
            "8:0 Read 7\n8:0 Write 1024\n8:0 Total 1031\nTotal 1031\n",
        );
        assert_eq!(
            mgr.agent("web").stats().unwrap(),
            Stats {
                cpu_usage_usec: Some(2500),
                memory_current: Some(8192),
                pids_current: Some(4),
                io_write_bytes: Some(1024),
                memory_events_max: Some(3),
                pids_events_max: Some(1),
                cpu_stall_usec: None,
            },
            "{kind:?}"
        );
    }
}

#[test]
fn hybrid_stats_fall_back_to_unified() {
    let m = MockCgroupFs::new(MockKind::Hybrid);
    std::fs::remove_dir_all(m.hier("cpu,cpuacct")).unwrap();
    let mgr = manager(&m, None);
    let rel = "/warden/agents/web";
    m.cgroup(rel);
    m.write("unified", rel, "cpu.stat", "usage_usec 77\n");
    assert_eq!(mgr.agent("web").stats().unwrap().cpu_usage_usec, Some(77));
}

#[test]
fn missing_stat_files_are_none() {
    let m = MockCgroupFs::new(MockKind::V1);
    let mgr = manager(&m, None);
    let rel = "/warden/agents/web";
    m.cgroup(rel);
    for (h, f) in [
        ("cpu,cpuacct", "cpuacct.usage"),
        ("memory", "memory.usage_in_bytes"),
        ("pids", "pids.current"),
        ("blkio", "blkio.throttle.io_service_bytes_recursive"),
        ("blkio", "blkio.throttle.io_service_bytes"),
    ] {
        std::fs::remove_file(m.path(h, rel).join(f)).unwrap();
    }
    let s = mgr.agent("web").stats().unwrap();
    assert_eq!(s.cpu_usage_usec, None);
    assert_eq!(s.memory_current, None);
    assert_eq!(s.io_write_bytes, None);
    // Without pids.current, counted from the procs files.
    assert_eq!(s.pids_current, Some(0));
}

#[test]
fn errors_name_path_and_data() {
    let m = MockCgroupFs::new(MockKind::V1);
    let mgr = manager(&m, None);
    let e = mgr.agent("nope").freeze().unwrap_err().to_string();
    let want: PathBuf = m.path("freezer", "/warden/agents/nope/freezer.state");
    assert!(
        e.contains(&want.display().to_string()) && e.contains("FROZEN"),
        "{e}"
    );
}

// ---- the halt ladder fails closed on read errors ------------------------------

/// A halt that cannot read `cgroup.procs` (descriptors exhausted, say) must
/// not report "0 survivors, complete" while the cgroup is still populated.
#[test]
fn halt_with_unreadable_procs_is_not_complete_and_names_the_error() {
    let m = MockCgroupFs::new(MockKind::V2);
    let mgr = manager(&m, None);
    m.cgroup("/warden/agents/a");
    m.write(
        "",
        "/warden/agents",
        "cgroup.events",
        "populated 1\nfrozen 1\n",
    );
    m.write(
        "",
        "/warden/agents/a",
        "cgroup.procs",
        "Too many open files\n",
    );
    let scope = mgr.agents();
    let agent = mgr.agent("a");
    let members = [crate::halt::Member {
        name: "a".into(),
        cgroup: agent.as_ref(),
        log: None,
    }];
    let (report, _) = crate::halt::run(&crate::halt::Request {
        id: None,

        scope: scope.as_ref(),

        members: &members,

        trigger: "test",

        reason: "r",

        hard: true,

        seen_at: std::time::Instant::now(),

        empty_deadline: std::time::Duration::from_millis(5),

        evidence_budget: crate::config::output::DEFAULT_EVIDENCE_BUDGET,
    });
    assert!(!report.complete(), "{report:?}");
    assert!(!report.verified_empty);
    let errors = report.errors.join("\n");
    assert!(errors.contains("list processes"), "{errors}");
    assert!(errors.contains("expected a pid"), "{errors}");
    assert!(errors.contains("survivors unknown"), "{errors}");
}

/// The same when the emptiness itself cannot be read.
#[test]
fn halt_with_unreadable_populated_is_not_complete() {
    let m = MockCgroupFs::new(MockKind::V2);
    let mgr = manager(&m, None);
    m.cgroup("/warden/agents");
    m.write("", "/warden/agents", "cgroup.events", "frozen 1\n");
    let scope = mgr.agents();
    let (report, _) = crate::halt::run(&crate::halt::Request {
        id: None,
        scope: scope.as_ref(),
        members: &[],
        trigger: "test",
        reason: "r",
        hard: true,
        seen_at: std::time::Instant::now(),
        empty_deadline: std::time::Duration::from_millis(5),
        evidence_budget: crate::config::output::DEFAULT_EVIDENCE_BUDGET,
    });
    assert!(!report.complete(), "{report:?}");
    assert!(report.survivors.is_empty());
    let errors = report.errors.join("\n");
    assert!(errors.contains("read populated"), "{errors}");
}

#[test]
fn halt_of_an_empty_cgroup_is_complete() {
    let m = MockCgroupFs::new(MockKind::V2);
    let mgr = manager(&m, None);
    m.cgroup("/warden/agents");
    m.write(
        "",
        "/warden/agents",
        "cgroup.events",
        "populated 0\nfrozen 1\n",
    );
    let (report, _) = crate::halt::run(&crate::halt::Request {
        id: None,
        scope: mgr.agents().as_ref(),
        members: &[],
        trigger: "test",
        reason: "r",
        hard: true,
        seen_at: std::time::Instant::now(),
        empty_deadline: std::time::Duration::from_millis(5),
        evidence_budget: crate::config::output::DEFAULT_EVIDENCE_BUDGET,
    });
    assert!(report.complete(), "{report:?}");
}

#!/usr/bin/env python3
"""#12 hardening benchmark: repeats findings 1 and 2 against a warden binary.

    sudo python3 benches/hardening.py --bin target/release/warden [--only flood,evidence]

Run it against the binary before the change and after it; docs/benchmarks.md
has both. Needs root on a host with the cgroup2 `unified` mount (hybrid) or a
pure v2 host. The config uses only keys that both binaries know (defaults for
everything #12 adds), so the same run applies to both.

1. flood: a `yes` agent and a sleeping agent for 10 s, log_dir on a 256 MiB
   tmpfs (so the flood can fill a filesystem, but never the host's). Reports
   bytes of agent logs on disk, the daemon's state and reason afterwards,
   whether the sleeping agent still runs (same pid), the daemon's peak RSS,
   and `status` round trips (p50, max) sampled every 50 ms.
2. evidence: one agent of 500 processes with 1,000 open fds each; `warden
   halt`; the daemon's phase timings from `status`, against the kernel floor
   measured in the same run: the same tree in a bare cgroup, freeze, kill,
   thaw, wait for `populated 0`.

Everything lives under a temporary directory and a unique cgroup root; the
daemon and the floor's workload are ended by pid, their cgroups killed and
removed, the tmpfs unmounted, even on failure.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

MOUNT = "/sys/fs/cgroup"
UNIFIED = MOUNT + "/unified" if os.path.exists(MOUNT + "/unified/cgroup.procs") else MOUNT

FDS_WORKLOAD = (
    "import os, time\n"
    "fds = [os.open('/dev/null', os.O_RDONLY) for _ in range(1000)]\n"
    "for _ in range(499):\n"
    "    if os.fork() == 0:\n"
    "        break\n"
    "time.sleep(1000)\n"
)


def call(sock, cmd):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(120)
    s.connect(sock)
    s.sendall((json.dumps(cmd) + "\n").encode())
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        buf += chunk
    s.close()
    return json.loads(buf)


def cgroup_dirs(root):
    """Every directory of the test's cgroup root, deepest first, in every hierarchy."""
    out = []
    for h in os.listdir(MOUNT):
        base = os.path.join(MOUNT, h) + root
        if os.path.isdir(base):
            for d, _, _ in os.walk(base):
                out.append(d)
    if UNIFIED == MOUNT and os.path.isdir(MOUNT + root):
        for d, _, _ in os.walk(MOUNT + root):
            out.append(d)
    return sorted(set(out), key=len, reverse=True)


def scrub(root):
    for d in cgroup_dirs(root):
        for f in ("cgroup.kill",):
            try:
                with open(os.path.join(d, f), "w") as fh:
                    fh.write("1")
            except OSError:
                pass
        try:
            with open(os.path.join(d, "freezer.state"), "w") as fh:
                fh.write("THAWED")
        except OSError:
            pass
        for _ in range(200):
            try:
                pids = open(os.path.join(d, "cgroup.procs")).read().split()
            except OSError:
                break
            if not pids:
                break
            for p in pids:
                try:
                    os.kill(int(p), signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.01)
        try:
            os.rmdir(d)
        except OSError:
            pass


class Daemon:
    def __init__(self, binary, agents, top="", log_tmpfs=None):
        self.dir = tempfile.mkdtemp(prefix="warden-bench-hardening-")
        self.root = "/warden-bench-%d-%d" % (os.getpid(), int(time.time() * 1000) % 100000)
        self.mount = None
        log = os.path.join(self.dir, "log")
        os.makedirs(log)
        if log_tmpfs:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + log_tmpfs, "tmpfs", log], check=True)
            self.mount = log
        self.sock = os.path.join(self.dir, "control.sock")
        d = self.dir
        cfg = (
            f'stop_file = "{d}/safety/STOP"\nstate_dir = "{d}/state"\nlog_dir = "{log}"\n'
            f'socket = "{self.sock}"\nagent_socket_dir = "{d}/agents"\ncredentials_dir = "{d}/credentials"\n'
            f'cgroup_root = "{self.root}"\ngrace = "1s"\n{top}\n{agents}'
        )
        open(os.path.join(d, "warden.toml"), "w").write(cfg)
        self.err = open(os.path.join(d, "daemon.stderr"), "w")
        self.proc = subprocess.Popen(
            [binary, "daemon", "--config", os.path.join(d, "warden.toml")],
            stdout=subprocess.DEVNULL,
            stderr=self.err,
        )
        deadline = time.time() + 15
        while True:
            try:
                call(self.sock, {"cmd": "ping"})
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("daemon did not come up: " + open(self.err.name).read()[-2000:])
                time.sleep(0.02)

    def status(self):
        return call(self.sock, {"cmd": "status"})["data"]

    def agent(self, name):
        return next(a for a in self.status()["agents"] if a["name"] == name)

    def rss_kib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        scrub(self.root)
        if self.mount:
            subprocess.run(["umount", "-l", self.mount])
        subprocess.run(["chattr", "-R", "-a", self.dir], stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


def agent_toml(name, argv, extra=""):
    return f'[[agent]]\nname = "{name}"\ncommand = {json.dumps(argv)}\nuser = "nobody"\n{extra}\n'


def wait(what, timeout, f):
    deadline = time.time() + timeout
    while not f():
        if time.time() > deadline:
            raise RuntimeError("timed out waiting for " + what)
        time.sleep(0.05)


def flood(binary):
    d = Daemon(
        binary,
        agent_toml("flood", ["/usr/bin/yes"]) + agent_toml("quiet", ["/bin/sleep", "1000"]),
        log_tmpfs="256m",
    )
    try:
        wait("agents running", 15, lambda: all(d.agent(a)["state"] == "running" for a in ("flood", "quiet")))
        quiet_pid = d.agent("quiet")["pid"]
        lat, rss = [], 0
        t0 = time.time()
        while time.time() - t0 < 10:
            t = time.perf_counter()
            st = d.status()
            lat.append((time.perf_counter() - t) * 1000)
            rss = max(rss, d.rss_kib())
            time.sleep(0.05)
        st = d.status()
        on_disk = sum(
            os.path.getsize(os.path.join(d.mount, "agents", f)) for f in os.listdir(os.path.join(d.mount, "agents"))
        )
        quiet = next(a for a in st["agents"] if a["name"] == "quiet")
        return {
            "log_bytes_on_disk": on_disk,
            "daemon_state": st["daemon"]["state"],
            "reason": (st["daemon"].get("safe_mode") or {}).get("reason"),
            "quiet_agent_untouched": quiet["state"] == "running" and quiet["pid"] == quiet_pid,
            "status_p50_ms": round(statistics.median(lat), 2),
            "status_max_ms": round(max(lat), 2),
            "daemon_peak_rss_kib": rss,
        }
    finally:
        d.close()


def floor_ladder():
    """The same tree in a bare cgroup: freeze, kill, thaw, wait for empty."""
    cg = UNIFIED + "/warden-bench-floor-%d" % os.getpid()
    os.mkdir(cg)
    proc = None
    try:

        def join():
            with open(cg + "/cgroup.procs", "w") as fh:
                fh.write(str(os.getpid()))
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (1500, 1500))

        proc = subprocess.Popen(["python3", "-c", FDS_WORKLOAD], preexec_fn=join)
        wait("500 floor processes", 60, lambda: len(open(cg + "/cgroup.procs").read().split()) >= 500)
        time.sleep(0.5)

        def events():
            return dict(l.split() for l in open(cg + "/cgroup.events").read().splitlines())

        t0 = time.perf_counter()
        open(cg + "/cgroup.freeze", "w").write("1")
        while events().get("frozen") != "1":
            pass
        frozen = time.perf_counter()
        open(cg + "/cgroup.kill", "w").write("1")
        open(cg + "/cgroup.freeze", "w").write("0")
        while events().get("populated") != "0":
            time.sleep(0.0005)
        t1 = time.perf_counter()
        proc.wait()
        return {"floor_frozen_ms": round((frozen - t0) * 1000, 1), "floor_empty_ms": round((t1 - t0) * 1000, 1)}
    finally:
        if proc and proc.poll() is None:
            try:
                open(cg + "/cgroup.kill", "w").write("1")
            except OSError:
                pass
            proc.wait()
        for _ in range(500):
            try:
                os.rmdir(cg)
                break
            except OSError:
                time.sleep(0.01)


def evidence(binary):
    out = floor_ladder()
    d = Daemon(
        binary,
        agent_toml("fds", ["/usr/bin/python3", "-c", FDS_WORKLOAD], "[agent.rlimits]\nnofile = 1500\n"),
        top='[limits]\ndisable = ["fork_rate", "busy_loop"]\n',
    )
    try:
        wait("500 agent processes", 60, lambda: len(d.agent("fds")["pids"]) >= 500)
        time.sleep(0.5)
        t = time.perf_counter()
        r = call(d.sock, {"cmd": "halt", "reason": "hardening bench"})
        wall = (time.perf_counter() - t) * 1000
        assert r.get("ok"), r
        h = d.status()["last_halt"]
        tm = h["timings"]
        out.update(
            {
                "processes": h["processes"],
                "frozen_ms": tm["frozen_us"] / 1000,
                "evidence_ms": (tm["evidence_us"] - tm["frozen_us"]) / 1000,
                "killed_ms": tm["killed_us"] / 1000,
                "empty_ms": tm["empty_us"] / 1000,
                "halt_command_ms": round(wall, 1),
            }
        )
        # What the evidence record says about itself (the newest one).
        import sqlite3

        db = sqlite3.connect("file:" + os.path.join(d.dir, "state/warden.db") + "?mode=ro", uri=True)
        row = db.execute("SELECT length(data), data FROM evidence ORDER BY timestamp DESC LIMIT 1").fetchone()
        db.close()
        if row:
            ev = json.loads(row[1])
            out["evidence_bytes"] = row[0]
            out["evidence_complete"] = ev.get("complete", True)
            out["capture_ms"] = ev.get("capture_us", 0) / 1000
            om = ev.get("omitted") or {}
            out["omitted"] = {k: v for k, v in om.items() if k in ("details", "exe", "fds", "sockets") and v}
        return out
    finally:
        d.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--only", default="flood,evidence")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (cgroups, tmpfs)")
    binary = os.path.abspath(a.bin)
    res = {"bin": binary}
    if "flood" in a.only:
        res["flood"] = flood(binary)
    if "evidence" in a.only:
        res["evidence"] = evidence(binary)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

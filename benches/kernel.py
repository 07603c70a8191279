#!/usr/bin/env python3
"""Safety-kernel benchmark: stop file -> frozen and stop file -> empty, with a
healthy daemon and with a SIGSTOPped one, quiet and with every core busy.

    cargo build --release -p warden
    sudo python3 benches/kernel.py --bin target/release/warden [--runs 5]

Each run starts a daemon (its own temp dir and cgroup root) with 20 sleeping
processes in two agents, touches the stop file and polls the agents' parent
`cgroup.events` (cgroup2: the `unified` mount on hybrid hosts) in a tight loop
for `frozen 1` and then `populated 0`. "hung" SIGSTOPs the daemon first, so
only the safety kernel acts (it kills after `kernel_deadline`, set to 200 ms
here). "busy" adds one SCHED_OTHER busy-loop per core outside the agents.
Also reports the kernel process's RSS. Reuses hardening.py's harness: every
process is ended by pid, cgroups killed and removed, even on failure.
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hardening import UNIFIED, Daemon, agent_toml, wait  # noqa: E402

SLEEPERS = "for i in $(seq 10); do sleep 1000 & done; wait"


def events(d):
    return open(f"{UNIFIED}{d.root}/agents/cgroup.events").read()


def one(binary, hung, busy):
    agents = agent_toml("a", ["/bin/sh", "-c", SLEEPERS]) + agent_toml("b", ["/bin/sh", "-c", SLEEPERS])
    d = Daemon(binary, agents, top='kernel_deadline = "200ms"')
    spinners = []
    try:
        wait("agents", 15, lambda: "populated 1" in events(d) and len(d.agent("a")["pids"]) >= 11)
        kpid = d.status()["daemon"]["kernel_pid"]
        rss = int(next(l for l in open(f"/proc/{kpid}/status") if l.startswith("VmRSS:")).split()[1])
        if busy:
            for _ in range(os.cpu_count() or 1):
                spinners.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
            time.sleep(0.5)
        if hung:
            d.proc.send_signal(signal.SIGSTOP)
        stop = os.path.join(d.dir, "safety", "STOP")
        t0 = time.perf_counter()
        open(stop, "w").close()
        frozen = empty = None
        while time.perf_counter() - t0 < 10:
            e = events(d)
            now = time.perf_counter()
            if frozen is None and ("frozen 1" in e or "populated 0" in e):
                frozen = (now - t0) * 1000
            if "populated 0" in e:
                empty = (now - t0) * 1000
                break
        if hung:
            d.proc.send_signal(signal.SIGCONT)
        return frozen, empty, rss
    finally:
        for s in spinners:
            s.kill()
            s.wait()
        try:
            os.unlink(os.path.join(d.dir, "safety", "STOP"))
        except OSError:
            pass
        d.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/warden")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    rows, rsss = [], []
    for busy in (False, True):
        for hung in (False, True):
            fr, em = [], []
            for _ in range(a.runs):
                f, e, rss = one(a.bin, hung, busy)
                fr.append(f if f is not None else float("nan"))
                em.append(e if e is not None else float("nan"))
                rsss.append(rss)
            rows.append((("busy" if busy else "quiet"), ("hung" if hung else "healthy"), fr, em))
    print("| cores | daemon | stop -> frozen, median (min-max) ms | stop -> empty, median (min-max) ms |")
    print("|---|---|---|---|")
    for busy, hung, fr, em in rows:
        print(
            f"| {busy} | {hung} | {statistics.median(fr):.2f} ({min(fr):.2f}-{max(fr):.2f}) "
            f"| {statistics.median(em):.1f} ({min(em):.1f}-{max(em):.1f}) |"
        )
    print(f"\nkernel RSS: {min(rsss)}-{max(rsss)} KiB")


if __name__ == "__main__":
    main()

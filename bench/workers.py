#!/usr/bin/env python3
"""
Relayed packets per second and CPU per relayed packet of turnrelay with 1 and
2 (or more) worker processes, in one run, under a paced load.

  flock /tmp/turnrelay-load.lock .venv/bin/python bench/workers.py
  flock /tmp/turnrelay-load.lock .venv/bin/python bench/workers.py \\
      --workers 1,2,4 --pps 20000 --high-pps 100000 --allocs 200 --reps 3 --secs 5

For each worker count N this starts the relay itself on loopback
(.venv/bin/twistd -n --pidfile= turnrelay --workers N, UDP only, on free ports,
static user bench:benchpass, loopback peers allowed, the per-source
unauthenticated rate limit lifted because every client is 127.0.0.1), waits
until it serves (every "worker K (pid P) ready" line when N > 1, then a STUN
Binding answer), runs the shared load generator turnload.py (../shared/bench:
Python sets up --allocs allocations, each from its own client port, so the
kernel's steering spreads them over the workers; its C data plane udpgen
sends ChannelData paced and echoes it back as the peer) --reps times per
offered rate, and stops the relay.  Every process started here is stopped on
exit, Ctrl-C or SIGTERM (the relay runs in its own session, whose process
group is killed last).

Offered and relayed rates count packets the relay forwards: each message
the generator sends crosses the relay twice (client -> peer, echo peer ->
client), so --pps 20000 paces udpgen at 10000 messages/s.  The relay's CPU is
utime+stime of the twistd process and all its descendants (control process +
workers), read from /proc/PID/stat over the data phase only (from --warmup s
after udpgen starts to --tail s before it stops); packets = turnload's
relay_pps x that interval.  CPU % is of one core (200 = both of 2 cores).
Medians over the reps are printed as a Markdown table, then a second table of
what limits the measurement: the generator's own CPU (turnload + udpgen), the
whole machine's busy %, each relay process's CPU and the RTT.

A loopback benchmark: the relay, the generator and the kernel's loopback
path share this machine's cores, so absolute numbers are "what this box does
with the generator on it"; compare configurations within one run.

Needs: gcc (turnload.py builds udpgen once under $BENCH_WORK, default
/tmp/turnbench), Linux /proc.  Run it under the flock above so that it never
overlaps another load test.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
USER, PASSWORD = "bench", "benchpass"


# /proc ---------------------------------------------------------------------------------


def procTicks(pid: int) -> Optional[int]:
    """utime + stime of one process (all its threads), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces: split after its ")"
    fields = data[data.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def childrenOf(pid: int) -> List[int]:
    found: List[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return found


def tree(pid: int) -> List[int]:
    """pid and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(childrenOf(p))
    return pids


def treeTicks(pid: int) -> Dict[int, int]:
    ticks = {}
    for p in tree(pid):
        t = procTicks(p)
        if t is not None:
            ticks[p] = t
    return ticks


def machineTicks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


# The relay -----------------------------------------------------------------------------


def freePort(kind: int) -> int:
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def relayPortRange() -> tuple[int, int]:
    """Relay ports outside the ephemeral range, so that no client socket holds one."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(v) for v in f.read().split())
    except OSError:
        low, high = 32768, 60999
    if high <= 65535 - 1000:
        return high + 1, min(high + 4000, 65535)
    return 20000, min(low - 1, 23999)


def stunBinding(port: int, timeout: float) -> bool:
    tid = os.urandom(12)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.sendto(struct.pack("!HHI", 0x0001, 0, 0x2112A442) + tid, ("127.0.0.1", port))
            try:
                data = s.recv(2048)
            except OSError:  # timeout, or ICMP port unreachable
                time.sleep(0.1)
                continue
            if data[8:20] == tid:
                return True
        return False
    finally:
        s.close()


class Relay:
    def __init__(self, twistd: str, workers: int, work: str, extra: List[str]) -> None:
        self.workers = workers
        self.port = freePort(socket.SOCK_DGRAM)
        low, high = relayPortRange()
        self.logPath = os.path.join(work, f"relay-{workers}.log")
        state = os.path.join(work, f"state-{workers}")
        os.makedirs(state, exist_ok=True)
        self.command = [
            twistd,
            "-n",
            "--pidfile=",
            "turnrelay",
            "--workers",
            str(workers),
            "--listen",
            f"udp:{self.port}:interface=127.0.0.1",
            "--relay-ip",
            "127.0.0.1",
            "--min-port",
            str(low),
            "--max-port",
            str(high),
            "--user",
            f"{USER}:{PASSWORD}",
            "--user-quota",
            "0",
            "--total-quota",
            "0",
            "--allow-loopback-peers",
            "--unauthenticated-rate",
            "100000",
            "--unauthenticated-burst",
            "100000",
            "--state-dir",
            state,
            *extra,
        ]
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.pids: List[int] = []

    def start(self, timeout: float = 60) -> None:
        with open(self.logPath, "wb") as log:
            # its own session: the workers join its process group, which stop() kills
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        wanted = set(range(self.workers)) if self.workers > 1 else set()
        while wanted:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"twistd exited ({self.proc.returncode}); log:\n{self.logTail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers {sorted(wanted)} not ready; log:\n{self.logTail()}")
            with open(self.logPath, errors="replace") as f:
                for m in re.finditer(r"worker (\d+) \(pid \d+\) ready", f.read()):
                    wanted.discard(int(m.group(1)))
            time.sleep(0.1)
        if not stunBinding(self.port, max(1.0, deadline - time.monotonic())):
            raise RuntimeError(f"no STUN Binding answer on {self.port}; log:\n{self.logTail()}")
        self.pids = tree(self.proc.pid)
        if len(self.pids) != 1 + (self.workers if self.workers > 1 else 0):
            raise RuntimeError(f"unexpected relay process tree {self.pids}")

    def logTail(self, lines: int = 30) -> str:
        try:
            with open(self.logPath, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        stopProcessGroup(proc)
        for pid in self.pids:  # a worker that left the group would still be ours
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def stopProcessGroup(proc: subprocess.Popen[bytes]) -> None:
    """Kill what is left of the session a child was started in (its own pid is the group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


# One run -------------------------------------------------------------------------------


@dataclass
class Run:
    workers: int
    offered: float
    ok: bool
    error: str = ""
    relayed: float = float("nan")
    sentPps: float = float("nan")
    loss: float = float("nan")
    cpuPct: float = float("nan")
    usPerPacket: float = float("nan")
    genPct: float = float("nan")
    machinePct: float = float("nan")
    perProcess: List[float] = field(default_factory=list)
    rttP50: float = float("nan")
    rttP99: float = float("nan")


def startLoad(command: List[str]) -> subprocess.Popen[bytes]:
    """
    Start a load generator in a session of its own (stopProcessGroup ends
    it and whatever it started), its output collected.
    """
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def awaitDataPhase(load: subprocess.Popen[bytes], timeout: float = 60) -> Optional[str]:
    """
    Wait for the data phase: turnload.py has set up the allocations and runs
    udpgen (anywhere below it, through `ip netns exec` too).

    @return: None once it runs; else why not, with the end of the output.
    """
    deadline = time.monotonic() + timeout
    while not any(comm(p) == "udpgen" for p in treeTicks(load.pid)):
        if load.poll() is not None or time.monotonic() > deadline:
            out = load.communicate()[0].decode(errors="replace") if load.poll() is not None else ""
            return "no data phase: " + out.strip()[-300:]
        time.sleep(0.02)
    return None


def loadFigures(load: subprocess.Popen[bytes], out: str) -> Optional[Dict[str, str]]:
    """
    @return: the key=value figures of turnload's summary line, or None if
        the load failed.
    """
    line = next((ln for ln in out.splitlines() if ln.startswith("turn_mode=")), None)
    if load.returncode != 0 or line is None:
        return None
    return dict(tok.split("=", 1) for tok in line.split() if "=" in tok)


def runLoad(relay: Relay, args: argparse.Namespace, offered: float) -> Run:
    assert relay.proc is not None
    peerPort = freePort(socket.SOCK_DGRAM)
    command = [
        sys.executable,
        args.turnload,
        "--port",
        str(relay.port),
        "--user",
        USER,
        "--password",
        PASSWORD,
        "--peer-port",
        str(peerPort),
        "--mode",
        "channel",
        "--allocs",
        str(args.allocs),
        "--size",
        str(args.size),
        "--window",
        str(args.window),
        "--rate",
        str(offered / 2),  # messages/s; each crosses the relay twice
        "--secs",
        str(args.secs),
    ]
    load = startLoad(command)
    try:
        failed = awaitDataPhase(load)
        if failed is not None:
            return Run(relay.workers, offered, False, failed)
        time.sleep(args.warmup)
        r0, g0, m0, t0 = (
            treeTicks(relay.proc.pid),
            treeTicks(load.pid),
            machineTicks(),
            time.monotonic(),
        )
        time.sleep(args.secs - args.warmup - args.tail)
        r1, g1, m1, t1 = (
            treeTicks(relay.proc.pid),
            treeTicks(load.pid),
            machineTicks(),
            time.monotonic(),
        )
        out = load.communicate(timeout=args.secs + 120)[0].decode(errors="replace")
    finally:
        if load.poll() is None:
            stopProcessGroup(load)
    kv = loadFigures(load, out)
    if kv is None:
        return Run(relay.workers, offered, False, out.strip()[-300:])
    wall = t1 - t0
    cpu = sum(r1[p] - r0.get(p, 0) for p in r1) / HZ
    gen = sum(g1[p] - g0.get(p, 0) for p in g1) / HZ
    relayed = float(kv["relay_pps"])
    run = Run(relay.workers, offered, True)
    run.relayed = relayed
    run.sentPps = 2 * float(kv["sent"]) / float(kv["secs"])
    run.loss = float(kv["loss_pct"])
    run.cpuPct = 100 * cpu / wall
    run.usPerPacket = 1e6 * cpu / (relayed * wall) if relayed > 0 else float("nan")
    run.genPct = 100 * gen / wall
    run.machinePct = 100 * NCPU * (m1[0] - m0[0]) / max(1, m1[1] - m0[1])
    run.perProcess = [100 * (r1.get(p, 0) - r0.get(p, 0)) / HZ / wall for p in relay.pids]
    run.rttP50, run.rttP99 = float(kv["rtt_p50_us"]), float(kv["rtt_p99_us"])
    return run


# Output --------------------------------------------------------------------------------


def med(values: List[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def spread(values: List[float], fmt: str) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "-"
    m = statistics.median(values)
    if len(values) == 1:
        return fmt % m
    return f"{fmt % m} [{fmt % min(values)}..{fmt % max(values)}]"


def report(results: Dict[tuple, List[Run]], args: argparse.Namespace) -> None:
    print()
    print(
        f"turnrelay workers bench: ChannelData {args.size} B payload, {args.allocs} allocations, "
        f"{args.secs:g} s per run (measured {args.secs - args.warmup - args.tail:g} s), "
        f"median [min..max] of {args.reps} runs; {NCPU} CPUs"
    )
    print()
    print("| workers | offered pps | relayed pps | loss | CPU µs/packet | CPU % |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for (workers, offered), runs in results.items():
        good = [r for r in runs if r.ok]
        failed = len(runs) - len(good)
        note = f" ({failed} failed)" if failed else ""
        print(
            f"| {workers}{note} | {offered:.0f} | {spread([r.relayed for r in good], '%.0f')} "
            f"| {spread([r.loss for r in good], '%.2f')} % "
            f"| {spread([r.usPerPacket for r in good], '%.1f')} "
            f"| {spread([r.cpuPct for r in good], '%.0f')} |"
        )
    print()
    print("What limits it (medians): the generator's offered rate actually sent, its CPU")
    print("(turnload.py + udpgen), the machine's busy CPU, each relay process's CPU")
    print("(control process first when workers > 1) and the round trip.")
    print()
    print(
        "| workers | offered pps | sent pps | generator CPU % | machine CPU % "
        "| relay CPU % per process | RTT p50 / p99 µs |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for (workers, offered), runs in results.items():
        good = [r for r in runs if r.ok]
        if not good:
            print(f"| {workers} | {offered:.0f} | - | - | - | - | - |")
            continue
        procs = " / ".join(
            f"{med([r.perProcess[i] for r in good if i < len(r.perProcess)]):.0f}"
            for i in range(max(len(r.perProcess) for r in good))
        )
        print(
            f"| {workers} | {offered:.0f} | {med([r.sentPps for r in good]):.0f} "
            f"| {med([r.genPct for r in good]):.0f} "
            f"| {med([r.machinePct for r in good]):.0f} of {100 * NCPU} "
            f"| {procs} | {med([r.rttP50 for r in good]):.0f} "
            f"/ {med([r.rttP99 for r in good]):.0f} |"
        )
    for runs in results.values():
        for r in runs:
            if not r.ok:
                print(f"\nfailed run (workers {r.workers}, {r.offered:.0f} pps): {r.error}")
    sys.stdout.flush()


# Main ----------------------------------------------------------------------------------


def parseArgs() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workers", default="1,2", help="worker counts, comma-separated [1,2]")
    ap.add_argument(
        "--pps",
        type=float,
        default=20000,
        help="paced offered load in relayed packets/s, the same for every worker count; "
        "pick one 1 worker relays without loss [20000]",
    )
    ap.add_argument(
        "--high-pps",
        type=float,
        default=100000,
        help="also a higher offered load, where 1 worker (or, on 2 cores, the machine) "
        "saturates; 0 for none [100000]",
    )
    ap.add_argument("--allocs", type=int, default=200, help="allocations, one client port each")
    ap.add_argument("--size", type=int, default=120, help="payload bytes [120]")
    ap.add_argument(
        "--window", type=int, default=4096, help="udpgen's cap on messages in flight [4096]"
    )
    ap.add_argument("--reps", type=int, default=3, help="runs per configuration [3]")
    ap.add_argument("--secs", type=float, default=5, help="seconds of load per run [5]")
    ap.add_argument("--warmup", type=float, default=0.7, help="seconds not measured first")
    ap.add_argument("--tail", type=float, default=0.3, help="seconds not measured last")
    ap.add_argument(
        "--turnload",
        default=os.environ.get(
            "TURNLOAD", os.path.join(REPO, "..", "shared", "bench", "turnload.py")
        ),
        help="the load generator [$TURNLOAD or ../shared/bench/turnload.py]",
    )
    ap.add_argument(
        "--twistd", default=os.path.join(REPO, ".venv", "bin", "twistd"), help="[.venv/bin/twistd]"
    )
    ap.add_argument(
        "--relay-arg",
        action="append",
        default=[],
        help="extra turnrelay option, e.g. --relay-arg=--log-level=warn [repeatable]",
    )
    args = ap.parse_args()
    if args.secs - args.warmup - args.tail < 1:
        ap.error("--secs must leave at least 1 s to measure after --warmup and --tail")
    if args.allocs > 256:
        ap.error("udpgen drives at most 256 sockets")
    for path in (args.turnload, args.twistd):
        if not os.path.exists(path):
            ap.error(f"{path} not found")
    return args


def main() -> int:
    args = parseArgs()
    counts = [int(w) for w in args.workers.split(",")]
    rates = [args.pps] + ([args.high_pps] if args.high_pps else [])

    def stopping(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stopping)

    work = tempfile.mkdtemp(prefix="turnrelay-workers-bench-")
    results: Dict[tuple, List[Run]] = {(n, rate): [] for rate in rates for n in counts}
    relay: Optional[Relay] = None
    try:
        for n in counts:
            relay = Relay(args.twistd, n, work, args.relay_arg)
            relay.start()
            print(
                f"[workers.py] relay up: {n} worker(s), udp 127.0.0.1:{relay.port}, "
                f"pids {relay.pids}",
                file=sys.stderr,
            )
            for rate in rates:
                for rep in range(args.reps):
                    run = runLoad(relay, args, rate)
                    results[(n, rate)].append(run)
                    print(
                        f"[workers.py] workers={n} offered={rate:.0f} rep={rep + 1}: "
                        + (
                            f"relayed={run.relayed:.0f} loss={run.loss:.2f}% "
                            f"cpu={run.cpuPct:.0f}% us/pkt={run.usPerPacket:.1f} "
                            f"gen={run.genPct:.0f}% machine={run.machinePct:.0f}% "
                            f"procs={' / '.join(f'{p:.0f}' for p in run.perProcess)}"
                            if run.ok
                            else f"FAILED {run.error}"
                        ),
                        file=sys.stderr,
                    )
            relay.stop()
            relay = None
    except KeyboardInterrupt:
        print("[workers.py] interrupted; stopping", file=sys.stderr)
        return 130
    finally:
        if relay is not None:
            relay.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(results, args)
    return 0 if all(r.ok for runs in results.values() for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

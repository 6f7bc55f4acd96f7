#!/usr/bin/env python3
"""
ChannelData relayed through veth pairs between network namespaces: the same
load against coturn (Debian's 4.6.1), the newest coturn in its fastest mode,
turnrelay with --offload off and turnrelay with --offload tc (the eBPF kernel
path), in one run.  Figures: the whole machine's CPU per relayed packet at a
common paced rate, and the highest relayed packet rate.

  flock /tmp/turnrelay-load.lock .venv/bin/python bench/offload.py
  flock /tmp/turnrelay-load.lock .venv/bin/python bench/offload.py \\
      --servers coturn,coturn-latest,off,tc --pps 50000 --reps 3 --secs 3

Needs root (namespaces, veth, sysctl, eBPF), iproute2, gcc, ethtool (the
generator's veths send full checksums, see --gen-tx-csum), and coturn
(apt-get install coturn).  The newest coturn is built once with
../shared/bench/build_coturn_latest.sh into $COTURN_BUILD (default
/tmp/coturn-latest) from a git directory of coturn (--coturn-git); without
one, or when the build fails, that server is skipped with the reason.
--coturn-latest PATH uses a binary already built.

Topology (two namespaces made for the run, deleted at exit):

  load ns: gcli 10.77.1.2  <-veth->  rcli 10.77.1.1  :relay ns (listener)
           gpeer 127.77.2.2 <-veth-> rpeer 10.77.2.1  (relay address)

The load namespace holds both sides of the generator: the TURN client
sockets (this script's --generator mode, run there, sets up the allocations
with turnload.py's own request code) and udpgen (../shared/bench/limit),
which pumps ChannelData paced from those sockets and plays the echo peer.
Every packet crosses a veth into the relay namespace and back, so the kernel
path runs on the relay's veths.  The peer sits on a 127.x address because
udpgen binds its peer socket only to loopback-looking hosts (127.*); the
address is on a veth, not on lo: route_localnet=1 in both namespaces lets
127/8 cross veths, lo in the relay namespace holds 127.0.0.1/32 only, and the
servers are told to allow loopback peers (turnrelay --allow-loopback-peers,
coturn allow-loopback-peers).

For each server: start it in the relay namespace (IP forwarding on there for
--offload tc, which must log "relaying UDP ChannelData in the kernel (tc on
...)" or the run stops), run the generator --reps times at --pps (paced,
relayed packets/s: udpgen sends --pps/2 messages/s, each crossing the relay
twice), then offer increasing rates (--ramp-start, x --ramp-factor, up to
--ramp-max) --reps times each until the median loss exceeds 1 % or the
generator cannot send what is offered (it saturates); stop the server.

CPU is the whole machine's: user+nice+system+irq+softirq jiffies of all
CPUs from /proc/stat over the data phase (--warmup s after udpgen starts to
--tail s before it stops), because the kernel path's work runs in softirq,
charged to no process.  It includes the generator (the same load for every
server); the CPU of user-space processes this bench did not start (other
sessions) is taken off, and printed, with the raw figure and an idle sample
before each server.  CPU µs/packet = busy CPU seconds / relayed packets; machine CPU %
is of one core (200 = both of 2 cores).  Medians of --reps runs.

Every process started here is stopped and both namespaces deleted on exit,
Ctrl-C or SIGTERM.  Run it under the flock above so that it never overlaps
another load test.  About 3 minutes with the defaults on 2 cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from workers import (  # noqa: E402
    HZ,
    NCPU,
    awaitDataPhase,
    loadFigures,
    machineTicks,
    med,
    procTicks,
    spread,
    startLoad,
    stopProcessGroup,
    treeTicks,
)

USER, PASSWORD, REALM = "bench", "benchpass", "bench.local"
SHARED = os.path.join(REPO, "..", "shared", "bench")
CLIENT_IP, SERVER_IP = "10.77.1.2", "10.77.1.1"  # gcli, rcli
RELAY_IP, PEER_IP = "10.77.2.1", "127.77.2.2"  # rpeer, gpeer
LISTEN_PORT, PEER_PORT = 3478, 5000
MIN_PORT, MAX_PORT = 40000, 49999
KERNEL_PATH = re.compile(r"relaying UDP ChannelData in the kernel \(tc on ([^)]*)\)")
SERVERS = ("coturn", "coturn-latest", "off", "tc")


def log(message: str) -> None:
    print(f"[offload.py] {message}", file=sys.stderr, flush=True)


def run(*command: str, check: bool = True) -> str:
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


# Namespaces ----------------------------------------------------------------------------


class Topology:
    """The relay and load namespaces and their two veth pairs."""

    def __init__(self, genTxCsum: bool) -> None:
        suffix = os.getpid()
        self.relay = f"trbench-relay-{suffix}"
        self.load = f"trbench-load-{suffix}"
        self.genTxCsum = genTxCsum
        self.made: List[str] = []

    def nsSysctl(self, ns: str, *settings: str) -> None:
        run("ip", "netns", "exec", ns, "sysctl", "-qw", *settings)

    def setUp(self) -> None:
        r, g = self.relay, self.load
        for ns in (r, g):
            run("ip", "netns", "add", ns)
            self.made.append(ns)
        run(
            "ip", "-n", r, "link", "add", "rcli", "type", "veth", "peer", "name", "gcli", "netns", g
        )
        run(
            "ip",
            "-n",
            r,
            "link",
            "add",
            "rpeer",
            "type",
            "veth",
            "peer",
            "name",
            "gpeer",
            "netns",
            g,
        )
        run("ip", "-n", r, "addr", "add", f"{SERVER_IP}/24", "dev", "rcli")
        run("ip", "-n", r, "addr", "add", f"{RELAY_IP}/24", "dev", "rpeer")
        run("ip", "-n", g, "addr", "add", f"{CLIENT_IP}/24", "dev", "gcli")
        run("ip", "-n", g, "addr", "add", f"{PEER_IP}/24", "dev", "gpeer")
        # 127/8 on a veth: let it be routed (both ends), and keep the relay's lo from
        # claiming all of 127/8 as local
        for ns, dev in ((r, "rpeer"), (g, "gpeer")):
            self.nsSysctl(
                ns,
                "net.ipv4.conf.all.route_localnet=1",
                f"net.ipv4.conf.{dev}.route_localnet=1",
                "net.ipv4.conf.all.rp_filter=0",
                f"net.ipv4.conf.{dev}.rp_filter=0",
            )
        run("ip", "-n", r, "link", "set", "lo", "up")
        run("ip", "-n", r, "addr", "del", "127.0.0.1/8", "dev", "lo", check=False)
        run("ip", "-n", r, "addr", "replace", "127.0.0.1/32", "dev", "lo")
        for ns, dev in ((r, "rcli"), (r, "rpeer"), (g, "gcli"), (g, "gpeer")):
            run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "-n", r, "route", "add", "127.77.2.0/24", "dev", "rpeer", "src", RELAY_IP)
        run("ip", "-n", g, "route", "add", "10.77.2.0/24", "dev", "gpeer", "src", PEER_IP)
        # static neighbours: no ARP for the 127.x address, nothing resolved mid-run
        for ns, dev, ip, other, otherDev in (
            (r, "rpeer", PEER_IP, g, "gpeer"),
            (g, "gpeer", RELAY_IP, r, "rpeer"),
            (r, "rcli", CLIENT_IP, g, "gcli"),
            (g, "gcli", SERVER_IP, r, "rcli"),
        ):
            mac = run("ip", "netns", "exec", other, "cat", f"/sys/class/net/{otherDev}/address")
            run("ip", "-n", ns, "neigh", "replace", ip, "lladdr", mac.strip(), "dev", dev,
                "nud", "permanent")  # fmt: skip
        if not self.genTxCsum:
            for dev in ("gcli", "gpeer"):
                run("ip", "netns", "exec", g, "ethtool", "-K", dev, "tx", "off")
        self.forwarding(False)

    def forwarding(self, on: bool) -> None:
        value = "1" if on else "0"
        self.nsSysctl(
            self.relay,
            *(f"net.ipv4.conf.{dev}.forwarding={value}" for dev in ("all", "rcli", "rpeer")),
        )

    def udpCounters(self) -> Dict[str, int]:
        """The load namespace's Udp: counters (/proc/net/snmp is per namespace)."""
        text = run("ip", "netns", "exec", self.load, "cat", "/proc/net/snmp", check=False)
        rows = [line.split()[1:] for line in text.splitlines() if line.startswith("Udp:")]
        if len(rows) < 2:
            return {}
        return {k: int(v) for k, v in zip(rows[0], rows[1], strict=False)}

    def tearDown(self) -> None:
        while self.made:
            run("ip", "netns", "del", self.made.pop(), check=False)


# Servers -------------------------------------------------------------------------------


class Server:
    """One TURN server run in the relay namespace, its own session."""

    def __init__(self, name: str, mode: str, command: List[str], logPath: str) -> None:
        self.name, self.mode, self.command, self.logPath = name, mode, command, logPath
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.note = ""

    def start(self, topo: Topology, timeout: float = 60) -> None:
        with open(self.logPath + ".out", "wb") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", topo.relay, *self.command],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while f"{SERVER_IP}:{LISTEN_PORT} " not in run(
            "ip", "netns", "exec", topo.relay, "ss", "-Hlnu", check=False
        ):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not listen; log:\n{self.logTail()}")
            time.sleep(0.1)

    def logTail(self, lines: int = 30) -> str:
        text = ""
        for path in (self.logPath, self.logPath + ".out"):
            try:
                with open(path, errors="replace") as f:
                    text += "".join(f.readlines()[-lines:])
            except OSError:
                pass
        return text

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        stopProcessGroup(proc)


def coturnServer(name: str, binary: str, work: str, extra: List[str]) -> Server:
    conf = os.path.join(work, f"{name}.conf")
    logPath = os.path.join(work, f"{name}.log")
    with open(conf, "w") as f:
        f.write(
            f"listening-ip={SERVER_IP}\nrelay-ip={RELAY_IP}\nlistening-port={LISTEN_PORT}\n"
            f"min-port={MIN_PORT}\nmax-port={MAX_PORT}\nlt-cred-mech\nfingerprint\n"
            f"user={USER}:{PASSWORD}\nrealm={REALM}\nno-tls\nno-dtls\nno-cli\n"
            f"no-multicast-peers\nallow-loopback-peers\nallowed-peer-ip={PEER_IP}\n"
            f"pidfile={os.path.join(work, name + '.pid')}\nlog-file={logPath}\n"
            "simple-log\nno-stdout-log\n"
        )
    return Server(name, " ".join(extra) or "default", [binary, "-c", conf, *extra], logPath)


def turnrelayServer(twistd: str, offload: str, work: str, extra: List[str]) -> Server:
    logPath = os.path.join(work, f"turnrelay-{offload}.log")
    state = os.path.join(work, f"state-{offload}")
    os.makedirs(state, exist_ok=True)
    command = [
        twistd, "-n", "--pidfile=", f"--logfile={logPath}", "turnrelay",
        "--workers", "1", "--offload", offload,
        "--listen", f"udp:{LISTEN_PORT}:interface={SERVER_IP}", "--relay-ip", RELAY_IP,
        "--min-port", str(MIN_PORT), "--max-port", str(MAX_PORT),
        "--user", f"{USER}:{PASSWORD}", "--user-quota", "0", "--total-quota", "0",
        "--allow-loopback-peers", "--state-dir", state, *extra,
    ]  # fmt: skip
    return Server("turnrelay", f"--offload {offload}", command, logPath)


def latestCoturn(args: argparse.Namespace) -> Tuple[Optional[str], str]:
    """The newest coturn's turnserver (built once, cached), or None and why not."""
    if args.coturn_latest:
        return args.coturn_latest, ""
    build = os.environ.get("COTURN_BUILD", "/tmp/coturn-latest")
    cached = sorted(
        (p for p in os.listdir(build) if p.startswith("build-")) if os.path.isdir(build) else []
    )
    for entry in reversed(cached):
        binary = os.path.join(build, entry, "bin", "turnserver")
        if os.access(binary, os.X_OK):
            return binary, ""
    if not args.coturn_git:
        return None, "no coturn git directory (--coturn-git) and nothing built in " + build
    script = os.path.join(SHARED, "build_coturn_latest.sh")
    log(f"building the newest coturn into {build} (once)")
    try:
        done = subprocess.run(
            [script, args.coturn_git],
            env={**os.environ, "COTURN_BUILD": build},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=args.build_timeout,
        )
    except subprocess.TimeoutExpired:
        return None, f"build_coturn_latest.sh took over {args.build_timeout:.0f} s"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not os.access(lines[-1], os.X_OK):
        return None, "build_coturn_latest.sh failed: " + done.stderr.strip()[-300:]
    return lines[-1], ""


# The generator (runs in the load namespace) --------------------------------------------


def loadTurnload(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("turnload", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generator(args: argparse.Namespace) -> int:
    """
    turnload.py's control plane from CLIENT_IP to the server (its Alloc binds and
    connects to one loopback host; here client, server and peer differ), then
    udpgen on the inherited sockets.  Prints udpgen's key=value line.
    """
    tl = loadTurnload(args.turnload)
    serverIP, serverPort = args.generator.rsplit(":", 1)
    peerIP, peerPort = args.peer.rsplit(":", 1)
    allocs: List[Any] = []
    try:
        for _ in range(args.allocs):
            al = tl.Alloc.__new__(tl.Alloc)
            al.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            al.s.bind((args.client_ip, 0))
            al.s.connect((serverIP, int(serverPort)))
            al.s.settimeout(0.5)
            al.user, al.password = USER.encode(), PASSWORD.encode()
            al.realm = al.nonce = al.key = None
            al.allocate()
            al.request(
                tl.CHANNEL_BIND,
                [
                    (tl.A_CHANNEL_NUMBER, struct.pack("!HH", 0x4000, 0)),
                    (tl.A_XOR_PEER, tl.xor_addr(peerIP, int(peerPort))),
                ],
            )
            allocs.append(al)
        fds = [al.s.fileno() for al in allocs]
        for al in allocs:
            al.s.setblocking(False)
        command = [
            args.udpgen, "-f", ",".join(map(str, fds)), "-P", peerPort, "-H", peerIP,
            "-l", str(args.size), "-w", str(args.window), "-d", str(args.secs),
            "-C", "0x4000", "-R", str(args.rate),
        ]  # fmt: skip
        out = subprocess.run(
            command, pass_fds=fds, stdout=subprocess.PIPE, text=True, timeout=args.secs + 60
        ).stdout
        print(f"turn_mode=channel allocs={args.allocs} {out.strip()}", flush=True)
    except Exception as e:
        print("error=" + str(e).replace(" ", "_"), flush=True)
        return 1
    finally:
        for al in allocs:
            al.s.setblocking(True)
            al.s.settimeout(1.0)
            al.release()
            al.s.close()
    return 0


def buildUdpgen() -> str:
    """udpgen, built as turnload.py builds it (same place, same flags)."""
    work = os.environ.get("BENCH_WORK") or os.path.join(
        os.environ.get("TMPDIR", "/tmp"), "turnbench"
    )
    os.makedirs(work, exist_ok=True)
    gen = os.path.join(work, "udpgen")
    src = os.path.join(SHARED, "limit", "udpgen.c")
    if not os.path.exists(gen) or os.path.getmtime(gen) < os.path.getmtime(src):
        subprocess.check_call(["gcc", "-O2", "-o", gen, src])
    return gen


# One run -------------------------------------------------------------------------------


@dataclass
class Run:
    offered: float
    ok: bool
    error: str = ""
    relayed: float = float("nan")
    sentPps: float = float("nan")
    loss: float = float("nan")
    usPerPacket: float = float("nan")  # machine busy minus other user processes
    rawUsPerPacket: float = float("nan")  # machine busy
    machinePct: float = float("nan")
    rawMachinePct: float = float("nan")
    otherPct: float = float("nan")
    relayPct: float = float("nan")
    genPct: float = float("nan")
    csumErrors: int = 0
    rttP50: float = float("nan")


RUNS = [0]


def runLoad(server: Server, topo: Topology, args: argparse.Namespace, offered: float) -> Run:
    assert server.proc is not None
    # a fresh peer port each run: coturn --multiplex-peer keeps a released
    # session's peer address for a while and refuses ChannelBind to it (400)
    RUNS[0] += 1
    peerPort = PEER_PORT + RUNS[0] % 1000
    command = [
        "ip", "netns", "exec", topo.load, sys.executable, os.path.abspath(__file__),
        "--generator", f"{SERVER_IP}:{LISTEN_PORT}", "--client-ip", CLIENT_IP,
        "--peer", f"{PEER_IP}:{peerPort}", "--udpgen", args.udpgen,
        "--turnload", args.turnload, "--allocs", str(args.allocs), "--size", str(args.size),
        "--window", str(args.window), "--rate", str(offered / 2), "--secs", str(args.secs),
    ]  # fmt: skip
    before = topo.udpCounters()
    load = startLoad(command)
    try:
        failed = awaitDataPhase(load)
        if failed is not None:
            return Run(offered, False, failed)
        time.sleep(args.warmup)
        u0 = userProcessTicks()
        s0 = treeTicks(server.proc.pid), treeTicks(load.pid), machineTicks(), time.monotonic()
        time.sleep(args.secs - args.warmup - args.tail)
        s1 = treeTicks(server.proc.pid), treeTicks(load.pid), machineTicks(), time.monotonic()
        u1 = userProcessTicks()
        out = load.communicate(timeout=args.secs + 120)[0].decode(errors="replace")
    finally:
        if load.poll() is None:
            stopProcessGroup(load)
    after = topo.udpCounters()
    kv = loadFigures(load, out)
    if kv is None:
        return Run(offered, False, out.strip()[-300:])
    wall = s1[3] - s0[3]
    busy = (s1[2][0] - s0[2][0]) / HZ  # jiffies of all CPUs -> CPU seconds
    relayCpu = sum(s1[0][p] - s0[0].get(p, 0) for p in s1[0]) / HZ
    genCpu = sum(s1[1][p] - s0[1].get(p, 0) for p in s1[1]) / HZ
    ours = set(s1[0]) | set(s1[1]) | set(s0[0]) | set(s0[1]) | {os.getpid()}
    other = sum(t - u0.get(p, 0) for p, t in u1.items() if p not in ours) / HZ
    result = Run(offered, True)
    result.relayed = float(kv["relay_pps"])
    result.sentPps = 2 * float(kv["sent"]) / float(kv["secs"])
    result.loss = float(kv["loss_pct"])
    packets = result.relayed * wall
    result.rawUsPerPacket = 1e6 * busy / packets if packets else float("nan")
    result.usPerPacket = 1e6 * (busy - other) / packets if packets else float("nan")
    share = NCPU * wall / max(1e-9, (s1[2][1] - s0[2][1]) / HZ)  # jiffies -> % of one core
    result.rawMachinePct = 100 * busy / wall * share
    result.machinePct = 100 * (busy - other) / wall * share
    result.otherPct = 100 * other / wall * share
    result.relayPct = 100 * relayCpu / wall
    result.genPct = 100 * genCpu / wall
    result.csumErrors = after.get("InCsumErrors", 0) - before.get("InCsumErrors", 0)
    result.rttP50 = float(kv["rtt_p50_us"])
    return result


def userProcessTicks() -> Dict[int, int]:
    """utime+stime of every user-space process (kernel threads have no cmdline)."""
    ticks = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if not f.read(1):
                    continue
        except OSError:
            continue
        t = procTicks(int(entry))
        if t is not None:
            ticks[int(entry)] = t
    return ticks


def idleMachinePct(secs: float = 1.5) -> float:
    m0 = machineTicks()
    time.sleep(secs)
    m1 = machineTicks()
    return 100 * NCPU * (m1[0] - m0[0]) / max(1, m1[1] - m0[1])


# Per server ----------------------------------------------------------------------------


@dataclass
class Result:
    server: str
    mode: str
    idlePct: float = float("nan")
    paced: Optional[List[Run]] = None
    ramp: Optional[List[Tuple[float, List[Run]]]] = None
    maxPps: float = float("nan")
    limit: str = ""
    skipped: str = ""


def reps(server: Server, topo: Topology, args: argparse.Namespace, rate: float) -> List[Run]:
    runs = []
    for rep in range(args.reps):
        r = runLoad(server, topo, args, rate)
        runs.append(r)
        log(
            f"{server.name} {server.mode} offered={rate:.0f} rep={rep + 1}: "
            + (
                f"relayed={r.relayed:.0f} sent={r.sentPps:.0f} loss={r.loss:.2f}% "
                f"us/pkt={r.usPerPacket:.2f} (raw {r.rawUsPerPacket:.2f}) "
                f"machine={r.machinePct:.0f}% (raw {r.rawMachinePct:.0f}%) "
                f"relay={r.relayPct:.0f}% gen={r.genPct:.0f}% csum_err={r.csumErrors}"
                if r.ok
                else f"FAILED {r.error}"
            )
        )
    return runs


def measure(server: Server, topo: Topology, args: argparse.Namespace) -> Result:
    result = Result(server.name, server.mode)
    topo.forwarding(server.mode == "--offload tc")
    result.idlePct = idleMachinePct()
    server.start(topo)
    try:
        if server.mode.startswith("--offload") and server.mode != "--offload off":
            deadline = time.monotonic() + 10
            while not (m := KERNEL_PATH.search(server.logTail(200))):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"turnrelay {server.mode}: the kernel path is not active; log:\n"
                        + server.logTail()
                    )
                time.sleep(0.2)
            log(f"kernel path active: tc on {m.group(1)}")
        log(f"{server.name} {server.mode} up in {topo.relay} (idle machine {result.idlePct:.0f}%)")
        result.paced = reps(server, topo, args, args.pps)
        result.ramp = []
        rate = args.ramp_start
        while rate <= args.ramp_max:
            runs = reps(server, topo, args, rate)
            result.ramp.append((rate, runs))
            good = [r for r in runs if r.ok]
            if not good:
                result.limit = "runs failed"
                break
            loss, sent = med([r.loss for r in good]), med([r.sentPps for r in good])
            if loss <= 1:
                result.maxPps = max(
                    v for v in (result.maxPps, med([r.relayed for r in good])) if v == v
                )
            if loss > 1:
                result.limit = f"loss {loss:.1f} % at {rate:.0f}"
                break
            if sent < 0.95 * rate:
                result.limit = f"generator: sends {sent:.0f} of {rate:.0f}"
                break
            rate *= args.ramp_factor
        else:
            result.limit = f"--ramp-max {args.ramp_max:.0f} reached"
    finally:
        server.stop()
        topo.forwarding(False)
    return result


# Output --------------------------------------------------------------------------------


def report(results: List[Result], args: argparse.Namespace) -> None:
    print()
    print(
        f"ChannelData through veth between namespaces: {args.size} B payload, {args.allocs} "
        f"allocation(s), {args.secs:g} s runs (measured {args.secs - args.warmup - args.tail:g} "
        f"s), median [min..max] of {args.reps}; {NCPU} CPUs.  CPU = the whole machine's busy "
        "time (/proc/stat: user+nice+system+irq+softirq, all CPUs; generator and kernel "
        "included) minus the CPU of user-space processes this bench did not start; % of one core"
    )
    print()
    print(
        f"| server | mode | max relayed pps | CPU µs/packet at {args.pps:.0f} pps "
        f"| machine CPU % at {args.pps:.0f} pps |"
    )
    print("| --- | --- | ---: | ---: | ---: |")
    for res in results:
        if res.skipped:
            print(f"| {res.server} | {res.mode} | skipped: {res.skipped} | - | - |")
            continue
        good = [r for r in res.paced or [] if r.ok]
        print(
            f"| {res.server} | {res.mode} | {res.maxPps:.0f} "
            f"| {spread([r.usPerPacket for r in good], '%.2f')} "
            f"| {spread([r.machinePct for r in good], '%.0f')} |"
        )
    print()
    print("What limits it, at the paced rate (medians): the relay process's and the")
    print("generator's CPU, other sessions' processes, the raw /proc/stat figures, loss,")
    print("UDP checksum errors counted in the load namespace (all runs), the idle machine")
    print("before the server started; then the ramp, offered -> relayed (loss, sent).")
    print()
    print(
        "| server | relay proc % | generator % | others % | raw µs/pkt | raw machine % "
        "| loss % | csum errors | RTT p50 µs | idle % | ramp | stopped by |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for res in results:
        if res.skipped:
            continue
        good = [r for r in res.paced or [] if r.ok]
        steps = []
        for rate, runs in res.ramp or []:
            ok = [r for r in runs if r.ok]
            if ok:
                relayed, sent = med([r.relayed for r in ok]), med([r.sentPps for r in ok])
                steps.append(
                    f"{rate / 1000:.0f}k→{relayed / 1000:.0f}k "
                    f"({med([r.loss for r in ok]):.1f}%, {sent / 1000:.0f}k)"
                )
        allRuns = good + [r for _, runs in res.ramp or [] for r in runs if r.ok]
        print(
            f"| {res.server} {res.mode} | {med([r.relayPct for r in good]):.0f} "
            f"| {med([r.genPct for r in good]):.0f} | {med([r.otherPct for r in good]):.0f} "
            f"| {med([r.rawUsPerPacket for r in good]):.2f} "
            f"| {med([r.rawMachinePct for r in good]):.0f} "
            f"| {med([r.loss for r in good]):.2f} "
            f"| {sum(r.csumErrors for r in allRuns)} | {med([r.rttP50 for r in good]):.0f} "
            f"| {res.idlePct:.0f} | {'; '.join(steps)} | {res.limit} |"
        )
    for res in results:
        for r in (res.paced or []) + [r for _, runs in res.ramp or [] for r in runs]:
            if not r.ok:
                print(f"\nfailed run ({res.server} {res.mode}, {r.offered:.0f} pps): {r.error}")
    sys.stdout.flush()


# Main ----------------------------------------------------------------------------------


def parseArgs() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="which, comma-separated: coturn (Debian's), coturn-latest (built, with "
        "--multiplex-peer --udp-gso), off, tc (turnrelay --offload off / tc) [all]",
    )
    ap.add_argument(
        "--pps",
        type=float,
        default=50000,
        help="the common paced load, relayed packets/s, for CPU per packet; one every "
        "server relays without loss [50000]",
    )
    ap.add_argument("--ramp-start", type=float, default=80000, help="first ramp rate [80000]")
    ap.add_argument("--ramp-factor", type=float, default=1.5, help="ramp step factor [1.5]")
    ap.add_argument("--ramp-max", type=float, default=700000, help="last rate tried [700000]")
    ap.add_argument(
        "--allocs",
        type=int,
        default=1,
        help="allocations [1]: coturn --multiplex-peer tells sessions apart by the peer's "
        "address alone and udpgen has one peer socket, so more than one allocation per "
        "coturn relay thread would be ambiguous there",
    )
    ap.add_argument("--size", type=int, default=120, help="payload bytes [120]")
    ap.add_argument("--window", type=int, default=4096, help="udpgen's cap in flight [4096]")
    ap.add_argument("--reps", type=int, default=3, help="runs per point [3]")
    ap.add_argument("--secs", type=float, default=3, help="seconds of load per run [3]")
    ap.add_argument("--warmup", type=float, default=0.6, help="seconds not measured first")
    ap.add_argument("--tail", type=float, default=0.3, help="seconds not measured last")
    ap.add_argument(
        "--gen-tx-csum",
        choices=("on", "off"),
        default="off",
        help="tx checksum offload on the generator's veths (off: ethtool -K tx off, so "
        "its packets carry full checksums, as those of clients on other hosts do; on: "
        "CHECKSUM_PARTIAL, which the kernel path passes up to user space) [off]",
    )
    ap.add_argument("--coturn", default=shutil.which("turnserver") or "/usr/bin/turnserver")
    ap.add_argument("--coturn-latest", help="a built newest turnserver (else built/cached)")
    ap.add_argument(
        "--coturn-git",
        default=os.environ.get("COTURN_GIT"),
        help="coturn git directory for build_coturn_latest.sh [$COTURN_GIT]",
    )
    ap.add_argument("--build-timeout", type=float, default=600, help="[600 s]")
    ap.add_argument(
        "--turnload",
        default=os.environ.get("TURNLOAD", os.path.join(SHARED, "turnload.py")),
        help="the load harness, for its TURN request code [$TURNLOAD or ../shared/bench]",
    )
    ap.add_argument(
        "--twistd", default=os.path.join(REPO, ".venv", "bin", "twistd"), help="[.venv/bin/twistd]"
    )
    ap.add_argument(
        "--relay-arg", action="append", default=[], help="extra turnrelay option [repeatable]"
    )
    # internal: the generator, run by this script in the load namespace
    ap.add_argument("--generator", help=argparse.SUPPRESS)
    ap.add_argument("--client-ip", help=argparse.SUPPRESS)
    ap.add_argument("--peer", help=argparse.SUPPRESS)
    ap.add_argument("--udpgen", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generator:
        return args
    if args.secs - args.warmup - args.tail < 1:
        ap.error("--secs must leave at least 1 s to measure after --warmup and --tail")
    unknown = set(args.servers.split(",")) - set(SERVERS)
    if unknown:
        ap.error(f"unknown servers {sorted(unknown)}")
    if os.geteuid() != 0:
        ap.error("needs root: network namespaces, veth, sysctl, eBPF")
    for path in (args.turnload, args.twistd):
        if not os.path.exists(path):
            ap.error(f"{path} not found")
    return args


def main() -> int:
    args = parseArgs()
    if args.generator:
        return generator(args)
    args.udpgen = buildUdpgen()

    def stopping(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stopping)

    work = tempfile.mkdtemp(prefix="turnrelay-offload-bench-")
    topo = Topology(genTxCsum=args.gen_tx_csum == "on")
    results: List[Result] = []
    server: Optional[Server] = None
    try:
        topo.setUp()
        log(f"namespaces {topo.relay}, {topo.load}; work dir {work}")
        for name in args.servers.split(","):
            if name == "coturn":
                version = run(args.coturn, "--version", check=False).strip()
                server = coturnServer("coturn " + version, args.coturn, work, [])
            elif name == "coturn-latest":
                binary, why = latestCoturn(args)
                if binary is None:
                    log(f"newest coturn skipped: {why}")
                    results.append(
                        Result("coturn newest", "--multiplex-peer --udp-gso", skipped=why)
                    )
                    continue
                version = run(binary, "--version", check=False).strip()
                server = coturnServer(
                    "coturn " + version, binary, work, ["--multiplex-peer", "--udp-gso"]
                )
            else:
                server = turnrelayServer(args.twistd, name, work, args.relay_arg)
            results.append(measure(server, topo, args))
            server = None
    except KeyboardInterrupt:
        log("interrupted; stopping")
        return 130
    finally:
        if server is not None:
            server.stop()
        topo.tearDown()
        shutil.rmtree(work, ignore_errors=True)
    report(results, args)
    ok = all(r.ok for res in results for r in (res.paced or []))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

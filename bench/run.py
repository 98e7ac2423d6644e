#!/usr/bin/env python3
"""The whole benchmark run of vringswitch against testpmd io-fwd and OVS-DPDK.

    sudo bench/run.py                  # everything; rewrites the results section of
                                       # docs/benchmarks.md and docs/benchmarks.png
    bench/run.py --secs 8 --rounds 2 --sizes 64 512 1518 --only throughput --no-docs

It installs what it lacks (dpdk-dev, openvswitch-switch-dpdk, matplotlib), sets up
hugepages, builds the release binaries, then measures, interleaved in one run:

- throughput: loopback through each switch (vringswitch, testpmd io-fwd with two net_vhost
  ports, OVS-DPDK with a NORMAL bridge and two dpdkvhostuserclient ports) at every size,
  switch after switch within each round; Mpps per port from the generator, and the switch's
  own busy cycles per packet;
- scaling: vringswitch with 2, 8 and 32 ports all carrying traffic, 8 ports in two VLANs
  (each round; medians reported), testpmd io-fwd with as many ports after each (the
  anchor's scaling), and 32 ports flooding broadcasts to each other;
- idle: CPU used by each switch with two connected, idle ports, as % of a core;
- latency: one frame at a time through each switch at 1000 frames/s (p50/p99, one way and
  round trip), and vringswitch's wake-up: the first frame after 1 s of idle;
- capture: vringswitch's loopback at 64 and 1518 B with port p0 captured (vringctl capture
  to /dev/null), interleaved with runs without;
- tso: 65214-byte TSO frames (45 segments of 1448, as Linux sends them) from one vs-probe
  VM to another that takes TSO, through vringswitch and through OVS-DPDK with
  `userspace-tso-enable=true`: busy cycles per frame and Gbps; vringswitch again to a VM
  that takes no offload (the switch cuts and checksums every frame); and a plain memcpy of
  the frame on the switch's core, the limit of one copy;
- dirtylog: what logging dirty pages for a live migration costs: vs-probe `stream` (two
  test VMs on CPU 0 keeping 128 frames in flight to each other) through vringswitch with the
  VMs logging dirty pages, as QEMU's do while a migration copies memory, against the same
  without, at 64 and 1518 B, interleaved over the rounds;
- migration: the downtime of live migrations of a QEMU guest (TCG) between two ports of
  vringswitch while another guest pings it every 10 ms (vs-migration), against the same
  migrations between TAP interfaces of a Linux bridge with QEMU's own userspace virtio-net:
  QEMU's downtime and the pings lost, interleaved over the rounds;
- tap, afxdp: VM -> host through a TAP port, or an AF_XDP port on a veth pair (testpmd
  txonly into the switch, counted by the kernel), and host -> VM (testpmd txonly on
  af_packet, counted by vs-probe sink), vringswitch against OVS-DPDK's `type=tap` and
  `type=afxdp`;
- vxlan: VM to VM through two VXLAN tunnel ends of one switch (encap and decap on its one
  core), the tunnel packets crossing a veth pair in a network namespace the bench makes
  (vsbvx), at 64 and 1518 B, against OVS-DPDK's userspace VXLAN (`type=vxlan` over
  AF_XDP ports on the same pair); and TSO frames through vringswitch's tunnel against a
  memcpy. The namespace is deleted afterwards with everything either switch made in it.

Layout of the machine (2 cores): every switch polls on CPU 1; generators and probes run on
CPU 0. Nothing else should run meanwhile.

With VRINGSWITCH_BIN=PATH that binary is measured instead of a fresh build (A/B runs
between commits). With PERF_OUT=PREFIX the worker's CPU is sampled with perf (cpu-clock)
during each vringswitch throughput run into PREFIX.SIZE.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
API_PORT = int(os.environ.get("API_PORT", "19180"))
SWITCH_CPU = 1
GEN_CPU = 0
# The generator's burst: also the frames each port has in flight from --tx-first.
GEN_BURST = [32]
TESTPMD = "dpdk-testpmd"
OVS_VSWITCHD = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk"
OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
HUGEPAGES = 2048  # of 2 MiB: generators (up to 1 GiB for 32 ports) plus OVS (512 MiB)
SWITCHES = ("vringswitch", "testpmd", "ovs")
# The TSC's frequency as vringswitch measured it (every switch here counts TSC cycles).
TSC_HZ = [0]


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def mac(n):
    return f"02:00:00:00:00:{n:02x}"


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


# ---------------------------------------------------------------- setup


def setup(build):
    if os.geteuid() != 0:
        sys.exit("bench/run.py needs root (hugepages, DPDK, OVS)")
    missing = [
        pkg
        for pkg, path in (
            ("dpdk-dev", "/usr/bin/dpdk-testpmd"),
            ("openvswitch-switch-dpdk", OVS_VSWITCHD),
        )
        if not Path(path).exists()
    ]
    if missing:
        log(f"installing {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        sh("apt-get", "update", "-q", env=env, stdout=subprocess.DEVNULL)
        sh("apt-get", "install", "-y", "-q", *missing, env=env, stdout=subprocess.DEVNULL)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("installing matplotlib from PyPI")
        sh(sys.executable, "-m", "pip", "install", "-q", "matplotlib")
    # Whatever an earlier run left polling or holding hugepages.
    subprocess.run(["pkill", "-f", "file-prefix vsb"], stderr=subprocess.DEVNULL)
    subprocess.run(["pkill", "-f", "ovs-vswitchd-dpdk"], stderr=subprocess.DEVNULL)
    # And a vringswitch of an earlier run that was interrupted (it holds the API port).
    subprocess.run(["pkill", "-f", "vsbench.*/vs.toml"], stderr=subprocess.DEVNULL)
    nr = Path("/proc/sys/vm/nr_hugepages")
    if int(nr.read_text()) < HUGEPAGES:
        nr.write_text(str(HUGEPAGES))
    Path("/dev/hugepages").mkdir(exist_ok=True)
    if "/dev/hugepages" not in Path("/proc/mounts").read_text():
        sh("mount", "-t", "hugetlbfs", "nodev", "/dev/hugepages")
    clean_hugepages()
    if build:
        log("building release binaries")
        sh("cargo", "build", "--release", "-q", "--bin", "vringswitch", cwd=ROOT)
    sh("cargo", "build", "--release", "-q", "-p", "vringswitch-tests", "--bin", "vs-probe",
       "--bin", "vs-migration", cwd=ROOT)


def clean_hugepages():
    for f in Path("/dev/hugepages").glob("vsb*"):
        f.unlink(missing_ok=True)


# ---------------------------------------------------------------- generator


def generator(work, socks, size, secs, server=False, mode="mac", prefix="vsbgen", peers=None,
              gen_args=()):
    """Runs testpmd owning one virtio_user port per socket for `secs` seconds.

    Ports are paired (0-1, 2-3, ...); with `mode="mac"` each port forwards what it receives
    to its partner's MAC, so frames circulate through the switch. Returns the list of each
    port's median Rx-pps (Mpps) over the 1 s samples after the first non-zero one."""
    extra = ",server=1" if server else ""
    vdevs = []
    for i, s in enumerate(socks):
        vdevs += ["--vdev", f"net_virtio_user{i},path={s},queues=1,mac={mac(i + 1)}{extra}"]
    peers = peers or {i: mac((i ^ 1) + 1) for i in range(len(socks))}
    peer_args = [f"--eth-peer={i},{m}" for i, m in peers.items()]
    mem = 512 if len(socks) <= 2 else 1024
    cmd = [
        "timeout", "-s", "INT", str(secs + 60), TESTPMD,
        "-l", f"{SWITCH_CPU},{GEN_CPU}", "--main-lcore", str(SWITCH_CPU),
        "--no-pci", "--single-file-segments", "-m", str(mem), "--file-prefix", prefix,
        *vdevs, "--", "--nb-cores=1", f"--forward-mode={mode}", *peer_args,
        f"--txpkts={size}", "--stats-period", "1", "--record-core-cycles", f"--burst={GEN_BURST[0]}",
        *gen_args,
    ]
    if mode == "mac":
        cmd.append("--tx-first")
    out = Path(work) / f"{prefix}.log"
    with open(out, "w") as f:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                             start_new_session=True)
    return p, out


def stop_process_group(p, sig, timeout=30, wait_first=0):
    """Sends `sig` to the group `p` leads, unless it exits within `wait_first` s; SIGKILL if
    it has not exited `timeout` s after the signal."""
    try:
        if wait_first:
            try:
                p.wait(timeout=wait_first)
                return
            except subprocess.TimeoutExpired:
                pass
        os.killpg(p.pid, sig)
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    except ProcessLookupError:
        p.wait()


def balanced(m):
    """Whether a throughput measurement is sound: frames circulate, so every port of the
    loop must carry about the same rate. The loopback is two loops (port 0 -> switch -> port
    1 -> generator -> port 0's TX, and the other way round), each started by one
    `--tx-first` burst. A loop whose burst is lost stays empty for good: one port at zero
    (seen with OVS at 512 and 1518 B, most likely a burst dropped before the other port was
    ready), the other port carrying its loop alone, faster than with both loops running."""
    ports = m["mpps_ports"]
    return bool(ports) and max(ports) > 0 and min(ports) >= 0.9 * max(ports)


def summarize(res):
    """Medians over the rounds per size and switch, sound measurements only."""
    res["summary"] = {}
    for size in dict.fromkeys(m["size"] for m in res["throughput"]):
        res["summary"][size] = {}
        for sw in SWITCHES:
            ms = [m for m in res["throughput"]
                  if m["size"] == size and m["switch"] == sw and balanced(m)]
            res["summary"][size][sw] = {
                "mpps": statistics.median(statistics.mean(m["mpps_ports"]) for m in ms) if ms else 0.0,
                "cpp": statistics.median(m["cpp"] for m in ms) if ms else 0.0,
            }


def core_busy(cpp, mpps_ports):
    """Share of a core busy at `cpp` cycles per packet for the total rate of `mpps_ports`,
    as a percentage; "?" when the TSC rate is unknown (it is read from vringswitch's stats,
    so a run without vringswitch has none)."""
    if not TSC_HZ[0]:
        return "?"
    return f"{cpp * sum(mpps_ports) * 1e6 / TSC_HZ[0]:.0%}"


def stop_generator(p, out):
    """Stops a generator (with --stats-period, testpmd runs until SIGINT) and parses its log:
    each port's median Rx Mpps, and the generator's own busy cycles per packet it forwarded
    (`--record-core-cycles`; 0 if it printed none)."""
    stop_process_group(p, signal.SIGINT)
    text = out.read_text(errors="replace")
    per_port = {}
    for block in text.split("Port statistics")[1:]:
        for port, body in re.findall(r"NIC statistics for port (\d+)\s+#+(.*?)#{10}", block, re.S):
            m = re.search(r"Rx-pps:\s+(\d+)", body)
            if m:
                per_port.setdefault(int(port), []).append(int(m.group(1)))
    clean_hugepages()
    m = re.findall(r"CPU cycles/packet=([0-9.]+)", text)
    gen_cpp = float(m[-1]) if m else 0.0
    res = []
    for port in sorted(per_port):
        s = [x for x in per_port[port] if x > 0][1:]
        res.append(statistics.median(s) / 1e6 if s else 0.0)
    if not res or not any(res):
        log("generator measured nothing; its output ends with:\n" + "\n".join(text.splitlines()[-15:]))
    return res, gen_cpp


def run_generator(work, socks, size, secs, **kw):
    p, out = generator(work, socks, size, secs, **kw)
    time.sleep(secs)
    return stop_generator(p, out)


# ---------------------------------------------------------------- vringswitch


class Vringswitch:
    def __init__(self, work, nports=2, vlans=None, uplink=None, port_lines=(), extra_lines=(),
                 mode="server", dataplane_lines=(), port_bridges=None):
        self.work = Path(work)
        self.socks = [str(self.work / f"p{i}.sock") for i in range(nports)]
        # After an upgrade, the process serving (not our child).
        self.replaced_by = None
        port_bridges = port_bridges or ["br0"] * nports
        lines = ["[dataplane]", f"cores = [{SWITCH_CPU}]", *dataplane_lines]
        for b in dict.fromkeys(["br0", *port_bridges]):
            lines += ["[[bridges]]", f'name = "{b}"']
        for i, s in enumerate(self.socks):
            lines += [
                "[[ports]]", f'name = "p{i}"', f'bridge = "{port_bridges[i]}"', 'type = "vhost-user"',
                f'socket = "{s}"', f'mode = "{mode}"',
            ]
            if vlans:
                lines.append(f'vlan = {{ mode = "access", tag = {vlans[i]} }}')
            lines += port_lines
        if uplink:
            lines += uplink.vs_lines()
        lines += extra_lines
        self.cfg = self.work / "vs.toml"
        self.cfg.write_text("\n".join(lines) + "\n")
        self.log = open(self.work / "vs.log", "w")
        self.start()

    def start(self):
        binary = os.environ.get("VRINGSWITCH_BIN") or str(ROOT / "target/release/vringswitch")
        self.p = subprocess.Popen(
            [binary, "--config", str(self.cfg), "--api", f"127.0.0.1:{API_PORT}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_for(lambda: all(Path(s).exists() for s in self.socks), "vringswitch's sockets")
        wait_for(self.api_up, "vringswitch's API")

    def upgrade(self):
        """`vringctl upgrade`: its answer (the new process's pid, the pause)."""
        out = subprocess.run([VRINGCTL, "--api", f"127.0.0.1:{API_PORT}", "--json", "upgrade"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"vringctl upgrade failed: {out.stderr}")
        answer = json.loads(out.stdout)
        self.replaced_by = answer["new_pid"]
        return answer

    def api_up(self):
        try:
            self.stats()
            return True
        except OSError:
            return False

    def stats(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{API_PORT}/v1/stats", timeout=5) as r:
            return json.load(r)

    def drops(self):
        """Every port's drops that happened, as {"PORT:REASON": count}."""
        return {f"{port['name']}:{reason}": n for port in self.stats()["ports"]
                for reason, n in port.get("drops", {}).items() if n}

    def cycles(self):
        """Busy cycles of worker 0, packets it took and bursts it took them in, so far."""
        st = self.stats()
        TSC_HZ[0] = st["cycles_per_second"]
        w = st["workers"][0]
        return w["busy_cycles"], w["packets"], sum(w["bursts"])

    def stop(self):
        if self.replaced_by:
            # The old process exited after handing over; the one serving is not our child.
            self.p.wait(timeout=20)
            try:
                os.kill(self.replaced_by, signal.SIGTERM)
                wait_for(lambda: not Path(f"/proc/{self.replaced_by}").exists()
                         or "zombie" in Path(f"/proc/{self.replaced_by}/status").read_text(),
                         "the upgraded vringswitch to stop")
            except (ProcessLookupError, FileNotFoundError):
                pass
            self.log.close()
            return
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.log.close()


def wait_for(cond, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def perf_record(out, secs):
    return subprocess.Popen(
        ["perf", "record", "-q", "-e", "cpu-clock", "-F", "4999", "-g", "-C", str(SWITCH_CPU),
         "-o", out, "--", "sleep", str(secs)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def measure_vringswitch(work, size, secs, nports=2, vlans=None, capture=None, port_lines=()):
    """vringswitch with `nports` ports circulating `size`-byte frames. Returns each port's
    Mpps, busy cycles per packet and frames per burst (the two counted from after a 2 s
    warm-up to the end), and the generator's cycles per packet. With `capture` (a list of
    `vringctl capture` options), port p0 is captured to /dev/null meanwhile, and the
    capture's end message is kept in `capture_result` of the last call."""
    vs = Vringswitch(work, nports, vlans, port_lines=port_lines)
    cap = None
    try:
        p, out = generator(work, vs.socks, size, secs)
        if capture is not None:
            cap = start_capture(work, capture)
        time.sleep(2)
        c0, n0, b0 = vs.cycles()
        perf = None
        if os.environ.get("PERF_OUT"):
            name = f"{os.environ['PERF_OUT']}.{size}" + ("" if nports == 2 else f".{nports}ports")
            perf = perf_record(name, max(secs - 4, 1))
        time.sleep(secs - 2)
        c1, n1, b1 = vs.cycles()
        mpps, gen_cpp = stop_generator(p, out)
        if perf:
            perf.wait()
        if cap:
            CAPTURE_RESULT[0] = stop_capture(cap)
    finally:
        vs.stop()
    cpp = (c1 - c0) / (n1 - n0) if n1 > n0 else 0.0
    burst = (n1 - n0) / (b1 - b0) if b1 > b0 else 0.0
    return mpps, cpp, burst, gen_cpp


CAPTURE_RESULT = [""]
VRINGCTL = str(ROOT / "target/release/vringctl")


def start_capture(work, options):
    """`vringctl capture p0 OPTIONS -w /dev/null` on the generator's CPU, started once the
    switch's capture is running."""
    err = open(Path(work) / "capture.err", "w+")
    p = subprocess.Popen(
        ["taskset", "-c", str(GEN_CPU), VRINGCTL, "--api", f"127.0.0.1:{API_PORT}", "capture",
         "p0", *options, "-w", "/dev/null"], stderr=err, start_new_session=True)
    p.err = err
    wait_for(lambda: "capture started" in (Path(work) / "vs.log").read_text(errors="replace"),
             "the capture to start")
    return p


def stop_capture(p):
    """Waits for a capture given --seconds to end (SIGINT after 30 s); returns what
    vringctl said at the end: the frames kept and those that were not."""
    stop_process_group(p, signal.SIGINT, wait_first=30)
    p.err.seek(0)
    return p.err.read().strip()


def on_off_cost(what, work, size, secs, rounds, on, note=None):
    """Loopback at `size` with `measure_vringswitch`'s options `on` and without, interleaved
    over `rounds`: medians of Mpps and busy cycles. `note(mode)` adds to each run's record."""
    runs = {"off": [], "on": []}
    for _ in range(rounds):
        for mode in ("off", "on"):
            mpps, cpp, _, _ = measure_vringswitch(work(), size, secs,
                                                  **(on if mode == "on" else {}))
            runs[mode].append({"mpps": sum(mpps) / len(mpps), "cpp": cpp,
                               **(note(mode) if note else {})})
            log(f"{what} {mode}, {size} B: {runs[mode][-1]}")
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("mpps", "cpp")}
           for m, rs in runs.items()}
    return {"size": size, "runs": runs, "median": med}


def capture_cost(work, size, secs, rounds):
    """Port p0 captured (both directions, 128-byte snaplen, to /dev/null, for the
    generator's `secs`) against no capture; each run notes what the capture kept."""
    return on_off_cost("capture", work, size, secs, rounds,
                       {"capture": ["-s", "128", "--seconds", str(secs)]},
                       lambda mode: {"capture": CAPTURE_RESULT[0] if mode == "on" else ""})


# Every port policed both ways, bits and frames, at rates no loop reaches: the cost of
# drawing from the buckets, with nothing dropped.
POLICE_ALL = [
    "police_rx = { rate_kbps = 100000000, rate_pps = 100000000 }",
    "police_tx = { rate_kbps = 100000000, rate_pps = 100000000 }",
]


def policing_cost(work, size, secs, rounds):
    """Both ports policed both ways (see POLICE_ALL) against no policer."""
    return on_off_cost("policing", work, size, secs, rounds, {"port_lines": POLICE_ALL})


def probe_run(vs, mode, secs, *args):
    """Runs `vs-probe MODE --a p0 --b p1 --secs SECS ARGS` through `vs` on the generator's
    core. Returns its output and the worker's (busy cycles, packets, bursts) 2 s in and 1 s
    before the end."""
    probe = subprocess.Popen(
        ["taskset", "-c", str(GEN_CPU), PROBE, mode, "--a", vs.socks[0], "--b", vs.socks[1],
         "--secs", str(secs), *args],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert probe.stdout.readline().strip() == "ready", f"vs-probe {mode} did not start"
    time.sleep(2)
    first = vs.cycles()
    time.sleep(secs - 3)
    last = vs.cycles()
    out, _ = probe.communicate(timeout=60)
    if probe.returncode != 0:
        raise SystemExit(f"vs-probe {mode} failed (exit {probe.returncode})")
    return out, first, last


MIRROR_PPS = 1_000_000


def mirror_run(work, size, secs, pps=MIRROR_PPS):
    """vs-probe mirror through vringswitch: p0 and p1 exchange `size`-byte frames at `pps`
    in all, p0 mirrored both ways to p2, whose VM takes every copy. Every frame p0 sent or
    was sent must reach p2 once, with no drop anywhere."""
    mirror = ["[[mirrors]]", 'name = "span"', 'ports = ["p0"]', 'output = "p2"']
    vs = Vringswitch(work, nports=3, extra_lines=mirror)
    try:
        out, (c0, n0, _), (c1, n1, _) = probe_run(
            vs, "mirror", secs, "--c", vs.socks[2], "--size", str(size), "--pps", str(pps))
        st = vs.stats()
    finally:
        vs.stop()
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    seconds = [x for x in lines if "offered" in x]
    ports = {p["name"]: p for p in st["ports"]}
    p0, p2 = ports["p0"], ports["p2"]
    drops = {f"{name} {reason}": n for name, p in ports.items()
             for reason, n in p["drops"].items() if n}
    return {"size": size, "pps": pps, "secs": secs,
            "offered_per_s": statistics.median(x["offered"] for x in seconds) if seconds else 0,
            "mirrored": p0["rx_packets"] + p0["tx_packets"], "copies": p2["tx_packets"],
            "drops": drops, "cpp": (c1 - c0) / (n1 - n0) if n1 > n0 else 0.0,
            "longest_turn_us": max((x.get("longest_turn_us", 0) for x in seconds), default=0)}


def mirror_part(work, secs, rounds):
    runs = []
    for r in range(1, rounds + 1):
        for size in (64, 1518):
            m = mirror_run(work(), size, secs)
            m["round"] = r
            log(f"mirror round {r}: {m}")
            runs.append(m)
    return runs


def mirror_report(res, L):
    if not res.get("mirror"):
        return
    L.append(f"### Port mirroring ({MIRROR_PPS / 1e6:g} Mpps through a mirrored port)\n")
    L.append("vs-probe's A and B (ports p0 and p1) exchange frames at the rate in all, paced by "
             "the clock; p0 is mirrored both ways to p2, whose VM gives every RX buffer back "
             "as soon as it is used. Copies must equal what p0 sent and was sent, with no drop "
             "anywhere. Cycles: the worker's busy cycles per frame it took (each taken frame "
             "delivered once and copied once).\n")
    L.append("| round | frame B | offered per s | p0 rx+tx | copies at p2 | drops | busy cyc/pkt |")
    L.append("|---|---|---|---|---|---|---|")
    for m in res["mirror"]:
        drops = ", ".join(f"{k} {v}" for k, v in m["drops"].items()) or "none"
        L.append(f"| {m['round']} | {m['size']} | {m['offered_per_s']:,} | {m['mirrored']:,} "
                 f"| {m['copies']:,} | {drops} | {m['cpp']:.0f} |")
    L.append("")


UPGRADES = 10
RESTARTS = 3


def gap_probe(vs_socks, secs, accept=False):
    """Starts `vs-probe gap` (A sends B numbered frames as fast as B takes them) on the
    generator's core; returns it once it is ready (with --accept: once it listens)."""
    cmd = ["taskset", "-c", str(GEN_CPU), PROBE, "gap", "--a", vs_socks[0], "--b", vs_socks[1],
           "--secs", str(secs), "--size", "64"]
    if accept:
        cmd.append("--accept")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)


def gap_result(probe, events):
    """The probe's gaps and totals; for each event (start, end, seconds since the probe was
    ready), the longest gap that began within it (or just before: the last frame before a
    gap can precede the request)."""
    out, _ = probe.communicate(timeout=120)
    if probe.returncode != 0:
        raise SystemExit(f"vs-probe gap failed (exit {probe.returncode})")
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    gaps = [x for x in lines if "gap_ms" in x]
    total = next(x for x in lines if "sent" in x)
    longest = []
    for start, end in events:
        inside = [g["gap_ms"] for g in gaps if start - 0.1 <= g["at_s"] <= end + 0.1]
        longest.append(max(inside, default=0.0))
    baseline = [g["gap_ms"] for g in gaps
                if not any(s - 0.1 <= g["at_s"] <= e + 0.1 for s, e in events)]
    return longest, total, max(baseline, default=0.0)


def upgrade_run(work):
    """64 B frames from p0 to p1 as fast as p1 takes them, through UPGRADES upgrades a
    second apart: the longest forwarding gap around each, frames lost."""
    vs = Vringswitch(work)
    events, paused = [], []
    try:
        probe = gap_probe(vs.socks, UPGRADES + 4)
        assert probe.stdout.readline().strip() == "ready", "vs-probe gap did not start"
        t0 = time.monotonic()
        for _ in range(UPGRADES):
            time.sleep(1)
            start = time.monotonic() - t0
            paused.append(vs.upgrade()["paused_ms"])
            events.append((start, time.monotonic() - t0))
        longest, total, baseline = gap_result(probe, events)
        st = vs.stats()
    finally:
        vs.stop()
    drops = {f"{p['name']} {r}": n for p in st["ports"] for r, n in p["drops"].items() if n}
    return {"gaps_ms": longest, "paused_ms": paused, "baseline_gap_ms": baseline,
            "sent": total["sent"], "received": total["received"], "lost": total["lost"],
            "out_of_order": total["out_of_order"], "drops": drops}


def restart_run(work):
    """The same frames through RESTARTS restarts of a daemon whose ports are in client mode
    (kill -9 and start again; the VMs wait for it, as QEMU with server=on does): the gap
    around each, the frames lost with the old process."""
    work = Path(work)
    socks = [str(work / f"p{i}.sock") for i in range(2)]
    probe = gap_probe(socks, RESTARTS * 4 + 4, accept=True)
    wait_for(lambda: all(Path(s).exists() for s in socks), "vs-probe's sockets")
    vs = Vringswitch(work, mode="client")
    events = []
    try:
        assert probe.stdout.readline().strip() == "ready", "vs-probe gap did not start"
        t0 = time.monotonic()
        for _ in range(RESTARTS):
            time.sleep(2)
            start = time.monotonic() - t0
            vs.p.kill()
            vs.p.wait()
            vs.start()
            events.append((start, time.monotonic() - t0 + 1.5))
        longest, total, baseline = gap_result(probe, events)
    finally:
        vs.stop()
    return {"gaps_ms": longest, "sent": total["sent"], "received": total["received"],
            "lost": total["lost"], "out_of_order": total["out_of_order"],
            "baseline_gap_ms": baseline}


def upgrade_part(work, rounds):
    runs = []
    for r in range(1, rounds + 1):
        u = upgrade_run(work())
        u["round"] = r
        log(f"upgrade round {r}: {u}")
        c = restart_run(work())
        c["round"] = r
        log(f"restart round {r}: {c}")
        runs.append({"round": r, "upgrade": u, "restart": c})
    return runs


def upgrade_report(res, L):
    if not res.get("upgrade"):
        return
    L.append(f"### Hitless upgrade ({UPGRADES} upgrades per round, 64 B)\n")
    L.append("vs-probe's A sends B numbered 64 B frames as fast as B takes them (at most 128 "
             "unseen, fewer than B's receive buffers, so the switch never lacks one) while "
             f"`vringctl upgrade` replaces the daemon {UPGRADES} times, a second apart. Gap: "
             "the longest time B received nothing around each upgrade (median and worst over "
             "the round); paused: from the old workers' stop to the new ones' start, as the "
             "upgrade reports it; lost: numbers that never came. Against it, today's other "
             f"way to replace the binary: kill -9 and start again, {RESTARTS} times, the "
             "ports in client mode (the VMs listen and are connected again). Baseline: the "
             "probe's own longest gap away from any upgrade or restart.\n")
    L.append("| round | upgrade gap median / worst ms | paused median ms | lost | "
             "restart gap median ms | lost at restarts | baseline gap ms |")
    L.append("|---|---|---|---|---|---|---|")
    for run in res["upgrade"]:
        u, c = run["upgrade"], run["restart"]
        L.append(f"| {run['round']} | {statistics.median(u['gaps_ms']):.1f} / "
                 f"{max(u['gaps_ms']):.1f} | {statistics.median(u['paused_ms']):.1f} | "
                 f"{u['lost']} of {u['sent']:,} | {statistics.median(c['gaps_ms']):.0f} | "
                 f"{c['lost']} | {max(u['baseline_gap_ms'], c['baseline_gap_ms']):.1f} |")
    L.append("")


# ---------------------------------------------------------------- security groups

SG_FLOWS = 10_000
SG_RULES = 50
# TCP ports the filler rules admit: traffic never uses them, every new connection scans them.
SG_FILLER = [2000 + i for i in range(SG_RULES - 2)]


def sg_dataplane(conntrack):
    """[dataplane] lines sizing the table at `conntrack` connections, all for any port."""
    if not conntrack:
        return []
    return [f"conntrack_max = {conntrack}", f"conntrack_per_port = {conntrack}"]


def sg_rules(rules=SG_RULES):
    """The group's rules as the API takes them."""
    out = [{"direction": "ingress", "protocol": "tcp", "port_range_min": 2000 + i,
            "port_range_max": 2000 + i} for i in range(rules - 2)]
    out.append({"direction": "ingress", "protocol": "udp"})
    out.append({"direction": "egress"})
    return out


def sg_group_lines(rules=SG_RULES):
    lines = ["[[security_groups]]", 'name = "bench"']
    for r in sg_rules(rules):
        lines.append("[[security_groups.rules]]")
        for k, v in r.items():
            lines.append(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}")
    return lines


def flowgen(flows):
    """testpmd's flowgen mode over `flows` UDP flows (it varies the addresses per frame and
    drops what it receives): both ports send, each the other's frames received."""
    return dict(mode="flowgen", gen_args=(f"--flowgen-flows={flows}",))


def api_call(method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{API_PORT}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read()
        return json.loads(text) if text else None


def vs_drops(vs, reasons):
    st = vs.stats()
    return {r: sum(p["drops"].get(r, 0) for p in st["ports"]) for r in reasons}


def sg_vringswitch(work, size, secs, groups, flows=SG_FLOWS, conntrack=None, during=None):
    """vringswitch's two ports under testpmd flowgen over `flows` flows, in group "bench"
    (`groups`) or in none. Returns per-port Mpps, busy cycles per packet from 2 s in, the
    security-group drops over that window, the connections tracked at the end and what
    `during(vs)` returned (run 2 s in)."""
    vs = Vringswitch(work, 2, port_lines=['security_groups = ["bench"]'] if groups else [],
                     extra_lines=sg_group_lines() if groups else [],
                     dataplane_lines=sg_dataplane(conntrack))
    reasons = ("acl_denied", "ct_invalid", "ct_full", "ip_spoofed")
    extra = None
    try:
        p, out = generator(work, vs.socks, size, secs, **flowgen(flows))
        time.sleep(2)
        c0, n0, b0 = vs.cycles()
        d0 = vs_drops(vs, reasons)
        if during:
            extra = during(vs)
        time.sleep(max(secs - 2, 1))
        c1, n1, b1 = vs.cycles()
        d1 = vs_drops(vs, reasons)
        tracked = vs_metric("vringswitch_bridge_connections")
        mpps, gen_cpp = stop_generator(p, out)
    finally:
        vs.stop()
    cpp = (c1 - c0) / (n1 - n0) if n1 > n0 else 0.0
    burst = (n1 - n0) / (b1 - b0) if b1 > b0 else 0.0
    return {"mpps_ports": mpps, "cpp": cpp, "gen_cpp": gen_cpp, "tracked": tracked, "burst": burst,
            "drops": {r: d1[r] - d0[r] for r in reasons}, "during": extra}


def vs_metric(name):
    with urllib.request.urlopen(f"http://127.0.0.1:{API_PORT}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith(name + "{") or l.startswith(name + " "))


# Neutron's OVS firewall driver, cut down to one network: each IP frame goes through
# conntrack twice, as the sender's egress (zone 1) and the receiver's ingress; established
# frames go on at once, new ones through the rules and are committed; invalid are dropped.
OVS_CT_FLOWS = [
    "table=0,priority=100,ip,actions=ct(table=1,zone=1)",
    "table=0,priority=90,arp,actions=NORMAL",
    "table=0,priority=0,actions=drop",
    "table=1,priority=100,ct_state=+trk+est,ip,actions=resubmit(,3)",
    "table=1,priority=100,ct_state=+trk+rel,ip,actions=resubmit(,3)",
    "table=1,priority=90,ct_state=+trk+new,ip,actions=ct(commit,zone=1),resubmit(,3)",
    "table=1,priority=0,actions=drop",
    "table=3,priority=100,ip,actions=ct(table=4,zone=1)",
    "table=4,priority=100,ct_state=+trk+est,ip,actions=NORMAL",
    "table=4,priority=100,ct_state=+trk+rel,ip,actions=NORMAL",
    "table=4,priority=90,ct_state=+trk+new,ip,actions=resubmit(,5)",
    "table=4,priority=0,actions=drop",
    *[f"table=5,priority=50,tcp,tp_dst={p},actions=ct(commit,zone=1),NORMAL" for p in SG_FILLER],
    "table=5,priority=50,udp,actions=ct(commit,zone=1),NORMAL",
    "table=5,priority=0,actions=drop",
]


def sg_ovs(work, size, secs, ct, flows=SG_FLOWS):
    """OVS-DPDK's two ports under the same flowgen, NORMAL (`ct` False) or through the
    conntrack pipeline above: per-port Mpps and the PMD's processing cycles per packet."""
    ovs = Ovs(work)
    try:
        if ct:
            flows_file = Path(work) / "ct.flows"
            flows_file.write_text("\n".join(OVS_CT_FLOWS) + "\n")
            sh("ovs-ofctl", "del-flows", "br0", env=ovs.env, stdout=subprocess.DEVNULL)
            sh("ovs-ofctl", "add-flows", "br0", str(flows_file), env=ovs.env,
               stdout=subprocess.DEVNULL)
        p, out = generator(work, ovs.socks, size, secs, server=True, **flowgen(flows))
        time.sleep(2)
        ovs.appctl("dpif-netdev/pmd-stats-clear")
        time.sleep(secs - 2)
        cpp = ovs.processing_cycles_per_packet()
        tracked = len(ovs.appctl("dpctl/dump-conntrack").splitlines()) if ct else 0
        mpps, gen_cpp = stop_generator(p, out)
    finally:
        ovs.stop()
    return {"mpps_ports": mpps, "cpp": cpp, "gen_cpp": gen_cpp, "tracked": tracked}


def sg_new_connections(work, size):
    """Every frame a new connection (flowgen over 2^31 flows) into a table of 4 M: the
    worker's busy cycles per frame over a window while the table fills, and what a core
    opens per second at that cost."""
    vs = Vringswitch(work, 2, port_lines=['security_groups = ["bench"]'],
                     extra_lines=sg_group_lines(), dataplane_lines=sg_dataplane(1 << 22))
    try:
        p, out = generator(work, vs.socks, size, 6, **flowgen((1 << 31) - 1))
        wait_for(lambda: vs.cycles()[1] > 100_000, "frames through the switch")
        c0, n0, _ = vs.cycles()
        t0 = vs_metric("vringswitch_bridge_connections")
        time.sleep(0.3)
        c1, n1, _ = vs.cycles()
        t1 = vs_metric("vringswitch_bridge_connections")
        full = vs_drops(vs, ("ct_full",))["ct_full"]
        stop_generator(p, out)
    finally:
        vs.stop()
    cpp = (c1 - c0) / (n1 - n0) if n1 > n0 else 0.0
    return {"cpp": cpp, "opened": t1 - t0, "frames": n1 - n0, "ct_full": full,
            "per_core_s": TSC_HZ[0] / cpp if cpp else 0.0}


def sg_memory(work):
    """The bytes the table of 1 M connections (the default) holds, as the daemon logs
    them, per connection; and the daemon's resident memory with it made and without."""
    rss, table_bytes = {}, 0
    for groups in (False, True):
        (work / str(groups)).mkdir()
        vs = Vringswitch(work / str(groups), 2,
                         port_lines=['security_groups = ["bench"]'] if groups else [],
                         extra_lines=sg_group_lines() if groups else [])
        try:
            time.sleep(1)
            status = Path(f"/proc/{vs.p.pid}/status").read_text()
            rss[groups] = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024
        finally:
            vs.stop()
        if groups:
            m = re.search(r"connection table made.*?bytes=(\d+)",
                          (work / str(groups) / "vs.log").read_text(errors="replace"))
            table_bytes = int(m.group(1)) if m else 0
    return {"rss_off": rss[False], "rss_on": rss[True], "table_bytes": table_bytes,
            "per_connection": table_bytes / (1 << 20)}


def sg_replace(vs):
    """PUT a 1000-rule group "bench" (UDP still allowed) while traffic runs: its time, and
    the drops meanwhile (none of an established, still-allowed flow may be dropped)."""
    reasons = ("acl_denied", "ct_invalid", "ct_full")
    d0 = vs_drops(vs, reasons)
    t = time.perf_counter()
    api_call("PUT", "/v1/security-groups/bench",
             {"name": "bench", "rules": sg_rules(1000)})
    ms = (time.perf_counter() - t) * 1e3
    time.sleep(1)
    d1 = vs_drops(vs, reasons)
    return {"ms": ms, "drops": {r: d1[r] - d0[r] for r in reasons}}


def sg_part(work, secs, rounds, switches):
    runs = []
    for r in range(1, rounds + 1):
        run = {"round": r}
        run["plain"] = sg_vringswitch(work(), 64, secs, groups=False)
        log(f"security groups round {r}, vringswitch plain: {run['plain']}")
        run["groups"] = sg_vringswitch(work(), 64, secs, groups=True)
        log(f"security groups round {r}, vringswitch with groups: {run['groups']}")
        if "ovs" in switches:
            run["ovs_plain"] = sg_ovs(work(), 64, secs, ct=False)
            log(f"security groups round {r}, OVS NORMAL: {run['ovs_plain']}")
            run["ovs_ct"] = sg_ovs(work(), 64, secs, ct=True)
            log(f"security groups round {r}, OVS ct(): {run['ovs_ct']}")
        run["new"] = sg_new_connections(work(), 64)
        log(f"security groups round {r}, new connections: {run['new']}")
        run["replace"] = sg_vringswitch(work(), 64, max(secs, 6), groups=True,
                                        during=sg_replace)["during"]
        log(f"security groups round {r}, 1000-rule replace: {run['replace']}")
        runs.append(run)
    return {"runs": runs, "memory": sg_memory(work())}


def sg_report(res, L):
    sg = res.get("secgroups")
    if not sg:
        return
    L.append(f"### Security groups ({SG_FLOWS:,} UDP flows, {SG_RULES} rules per port, 64 B)\n")
    L.append("testpmd's flowgen mode on both ports sends 64 B UDP frames over "
             f"{SG_FLOWS:,} flows (each port the other's frames received), through "
             "vringswitch with both ports in one stateful group of "
             f"{SG_RULES} rules ({SG_RULES - 2} TCP ports nobody uses, UDP in, anything out), "
             "and without groups; through OVS-DPDK with NORMAL, and with Neutron's firewall "
             "pipeline cut to one network: each IP frame through conntrack twice (the "
             "sender's egress, the receiver's ingress), established ones on at once, new "
             "ones through the same rules and committed. Mpps per port (the generator's "
             "receive rate), the switch's busy cycles per packet.\n")
    L.append("| round | vringswitch plain Mpps / cycles | with groups Mpps / cycles | "
             "groups / plain Mpps | OVS NORMAL | OVS ct() | groups / OVS ct() Mpps | "
             "cycles vs OVS ct() | tracked |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    def mean(m):
        return statistics.mean(m["mpps_ports"]) if m and m["mpps_ports"] else 0.0

    def cell(m):
        return f"{mean(m):.2f} / {m['cpp']:.0f}" if m else "-"

    for run in sg["runs"]:
        pl, g = run["plain"], run["groups"]
        oc = run.get("ovs_ct")
        vs_ovs = f"{ratio(mean(g), mean(oc)):.2f}x" if oc else "-"
        cyc_ovs = f"{ratio(g['cpp'], oc['cpp']):.2f}x" if oc else "-"
        L.append(f"| {run['round']} | {cell(pl)} | {cell(g)} | "
                 f"{ratio(mean(g), mean(pl)):.2f}x | {cell(run.get('ovs_plain'))} | "
                 f"{cell(oc)} | {vs_ovs} | {cyc_ovs} | {g['tracked']:.0f} |")
    L.append("")
    L.append("| round | new connections: cycles each | per second per core | "
             "1000-rule group replaced, ms | drops meanwhile |")
    L.append("|---|---|---|---|---|")
    for run in sg["runs"]:
        n, rp = run["new"], run["replace"] or {}
        drops = ", ".join(f"{r} {k}" for r, k in (rp.get("drops") or {}).items() if k) or "none"
        L.append(f"| {run['round']} | {n['cpp']:.0f} | {n['per_core_s'] / 1e6:.2f} M | "
                 f"{rp.get('ms', 0):.1f} | {drops} |")
    m = sg["memory"]
    L.append("")
    L.append(f"Memory per tracked connection: the table the daemon makes for 1 M connections "
             f"(its log's `bytes`: entries, index, free list), over 1 M: "
             f"**{m['per_connection']:.0f} bytes**. It is mapped when made and backed as it "
             f"fills: the daemon's resident memory was {m['rss_on'] / 2**20:.0f} MiB with "
             f"the table made and empty, {m['rss_off'] / 2**20:.0f} MiB without.\n")


# ---------------------------------------------------------------- testpmd io-fwd as the switch


class TestpmdSwitch:
    def __init__(self, work, nports=2):
        self.work = Path(work)
        self.socks = [str(self.work / f"t{i}.sock") for i in range(nports)]
        for s in self.socks:
            Path(s).unlink(missing_ok=True)
        self.out = self.work / "testpmd-switch.log"
        with open(self.out, "w") as f:
            self.p = subprocess.Popen(
                [TESTPMD, "-l", f"{GEN_CPU},{SWITCH_CPU}", "--main-lcore", str(GEN_CPU),
                 "--no-pci", "--no-huge", "-m", "1024", "--file-prefix", "vsbsw",
                 *[a for i, s in enumerate(self.socks) for a in ("--vdev", f"net_vhost{i},iface={s}")],
                 "--", "--nb-cores=1", "--forward-mode=io", "--record-core-cycles"],
                # Without --stats-period it runs until a newline or SIGINT: keep stdin open.
                stdin=subprocess.PIPE, stdout=f, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: all(Path(s).exists() for s in self.socks), "testpmd's vhost sockets")
        time.sleep(2)

    def stop(self):
        """Stops it; returns its forwarding core's cycles per packet over the whole run."""
        stop_process_group(self.p, signal.SIGINT)
        m = re.findall(r"CPU cycles/packet=([0-9.]+)", self.out.read_text(errors="replace"))
        return float(m[-1]) if m else 0.0


def throughput_testpmd(work, size, secs):
    sw = TestpmdSwitch(work)
    try:
        mpps, gen_cpp = run_generator(work, sw.socks, size, secs)
    finally:
        cpp = sw.stop()
    return mpps, cpp, None, gen_cpp


# ---------------------------------------------------------------- OVS-DPDK


class Ovs:
    """ovsdb-server and ovs-vswitchd-dpdk run by hand in a scratch folder."""

    def __init__(self, work, nports=2, tso=False, port_bridges=None):
        self.dir = Path(work) / "ovs"
        self.dir.mkdir()
        d = str(self.dir)
        self.env = dict(os.environ, OVS_RUNDIR=d, OVS_LOGDIR=d, OVS_DBDIR=d)
        self.db = f"unix:{d}/db.sock"
        self.socks = [f"{d}/o{i}.sock" for i in range(nports)]
        sh("ovsdb-tool", "create", f"{d}/conf.db", OVS_SCHEMA, env=self.env)
        sh("ovsdb-server", f"{d}/conf.db", f"--remote=punix:{d}/db.sock",
           f"--pidfile={d}/ovsdb.pid", "--detach", f"--log-file={d}/ovsdb.log", env=self.env)
        self.vsctl("--no-wait", "init")
        self.vsctl(
            "--no-wait", "set", "Open_vSwitch", ".", "other_config:dpdk-init=true",
            f"other_config:dpdk-socket-mem={1024 if tso else 512}", f"other_config:pmd-cpu-mask={1 << SWITCH_CPU:#x}",
            f"other_config:dpdk-lcore-mask={1 << GEN_CPU:#x}",
            'other_config:dpdk-extra="--no-pci --file-prefix=vsbovs"',
            f"other_config:userspace-tso-enable={'true' if tso else 'false'}",
        )
        sh(OVS_VSWITCHD, self.db, f"--pidfile={d}/vswitchd.pid", "--detach",
           f"--log-file={d}/vswitchd.log", env=self.env, stdout=subprocess.DEVNULL,
           stderr=subprocess.DEVNULL)
        bridges = port_bridges or ["br0"] * nports
        for br in dict.fromkeys(bridges):
            self.add_bridge(br)
        for i, (s, br) in enumerate(zip(self.socks, bridges)):
            self.vsctl("add-port", br, f"o{i}", "--", "set", "Interface", f"o{i}",
                       "type=dpdkvhostuserclient", f"options:vhost-server-path={s}")
        self.ctl = next(self.dir.glob("ovs-vswitchd*.ctl"))

    def add_bridge(self, br):
        self.vsctl("add-br", br, "--", "set", "bridge", br, "datapath_type=netdev")

    def vsctl(self, *args):
        sh("ovs-vsctl", f"--db={self.db}", *args, env=self.env, stdout=subprocess.DEVNULL)

    def appctl(self, *args):
        return subprocess.run(["ovs-appctl", "-t", str(self.ctl), *args], env=self.env,
                              check=True, capture_output=True, text=True).stdout

    def processing_cycles_per_packet(self):
        out = self.appctl("dpif-netdev/pmd-stats-show")
        m = re.search(r"avg processing cycles per packet: ([0-9.]+)", out)
        return float(m.group(1)) if m else 0.0

    def add_tap(self):
        """A `type=tap` port TAP_IF on br0, set up, with the MTU vringswitch's TAP gets."""
        # OVS sets its ports' MTU itself: asked for 9000.
        self.vsctl("add-port", "br0", TAP_IF, "--", "set", "Interface", TAP_IF, "type=tap",
                   "mtu_request=9000")
        wait_for_tap("OVS's TAP interface")
        sh("ip", "link", "set", TAP_IF, "up")

    def all_threads_cycles_per_packet(self):
        """Processing cycles over packets of every thread pmd-stats-show lists: the PMD
        and the main thread, which polls ports that are not DPDK's (tap)."""
        out = self.appctl("dpif-netdev/pmd-stats-show")
        cycles, packets = 0.0, 0
        for block in re.split(r"\n(?=\S)", out):
            pk = re.search(r"packets received: (\d+)", block)
            cy = re.search(r"processing cycles: (\d+)", block)
            if pk and cy:
                packets += int(pk.group(1))
                cycles += int(cy.group(1))
        return cycles / packets if packets else 0.0

    def stop(self):
        for name in ("vswitchd", "ovsdb"):
            pid = self.dir / f"{name}.pid"
            if pid.exists():
                try:
                    os.kill(int(pid.read_text()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        deadline = time.time() + 10
        while time.time() < deadline and subprocess.run(
            ["pgrep", "-f", f"{self.dir}/"], capture_output=True
        ).stdout:
            time.sleep(0.1)
        subprocess.run(["pkill", "-9", "-f", f"{self.dir}/"], stderr=subprocess.DEVNULL)
        clean_hugepages()


def throughput_ovs(work, size, secs):
    ovs = Ovs(work)
    try:
        p, out = generator(work, ovs.socks, size, secs, server=True)
        time.sleep(2)
        ovs.appctl("dpif-netdev/pmd-stats-clear")
        time.sleep(secs - 2)
        cpp = ovs.processing_cycles_per_packet()
        mpps, gen_cpp = stop_generator(p, out)
    finally:
        ovs.stop()
    return mpps, cpp, None, gen_cpp


# ---------------------------------------------------------------- uplink ports (TAP, AF_XDP)

TAP_IF = "vsbtap0"
# The veth pair of the AF_XDP runs: the switch's port on XDP_IF, the kernel's side XDP_PEER.
XDP_IF, XDP_PEER = "vsbxdp0", "vsbxdp1"
UPLINKS = ("tap", "afxdp")


class Uplink:
    """The kernel's side of an uplink port of `kind`: `port_if`, the interface the switch's
    port is on, and `kernel_if`, where the kernel counts what the switch sent and where the
    host's sender sends from. For a TAP port both are the TAP interface; for an AF_XDP port
    they are the two ends of a veth pair (MTU 3000 on both: 1518-byte frames fit, and XDP
    in veth's driver takes it), made here and deleted by `close`."""

    def __init__(self, kind):
        self.kind = kind
        self.port_if = TAP_IF if kind == "tap" else XDP_IF
        self.kernel_if = TAP_IF if kind == "tap" else XDP_PEER
        if kind == "afxdp":
            subprocess.run(["ip", "link", "del", XDP_IF], stderr=subprocess.DEVNULL)
            sh("ip", "link", "add", XDP_IF, "type", "veth", "peer", "name", XDP_PEER)
            for i in (XDP_IF, XDP_PEER):
                sh("ip", "link", "set", i, "mtu", "3000", "up")

    def vs_lines(self):
        port = ["[[ports]]", 'name = "up"', 'bridge = "br0"', f'type = "{self.kind}"',
                f'ifname = "{self.port_if}"']
        # An MTU above 1518 - 14 lets the kernel send 1518-byte frames into a TAP.
        return port + (["mtu = 9000"] if self.kind == "tap" else [])

    def add_to_ovs(self, ovs):
        if self.kind == "tap":
            ovs.add_tap()
        else:
            ovs.vsctl("add-port", "br0", XDP_IF, "--", "set", "Interface", XDP_IF,
                      "type=afxdp", "options:xdp-mode=native", "mtu_request=3000")

    def wait(self, what):
        wait_for(lambda: Path(f"/sys/class/net/{self.port_if}").exists(), what)

    def rx_packets(self):
        """Frames the kernel got on `kernel_if` (sent into it by the switch)."""
        return int(Path(f"/sys/class/net/{self.kernel_if}/statistics/rx_packets").read_text())

    def close(self):
        if self.kind == "afxdp":
            subprocess.run(["ip", "link", "del", XDP_IF], stderr=subprocess.DEVNULL)


def wait_for_tap(what):
    wait_for(lambda: Path(f"/sys/class/net/{TAP_IF}").exists(), what)


def uplink_vm_to_host(work, switch, uplink, size, secs):
    """VM -> host through an uplink port: testpmd txonly on a virtio_user port sends
    `size`-byte frames to an unknown MAC, which the switch floods to the uplink, the
    bridge's only other port. The figure is what the kernel received (rx_packets of
    `uplink.kernel_if`) after a 2 s warm-up, and the switch's busy cycles per packet over
    the same window."""
    peers = {0: mac(9)}
    if switch == "vringswitch":
        vs = Vringswitch(work, nports=1, uplink=uplink)
        try:
            uplink.wait("the uplink's interface")
            p, out = generator(work, vs.socks, size, secs, mode="txonly", peers=peers)
            time.sleep(2)
            c0, n0, _ = vs.cycles()
            k0, t0 = uplink.rx_packets(), time.time()
            time.sleep(secs - 2)
            c1, n1, _ = vs.cycles()
            k1, t1 = uplink.rx_packets(), time.time()
            stop_generator(p, out)
        finally:
            vs.stop()
        return (k1 - k0) / (t1 - t0) / 1e6, (c1 - c0) / (n1 - n0) if n1 > n0 else 0.0
    ovs = Ovs(work, nports=1)
    try:
        uplink.add_to_ovs(ovs)
        p, out = generator(work, ovs.socks, size, secs, server=True, mode="txonly", peers=peers)
        time.sleep(2)
        ovs.appctl("dpif-netdev/pmd-stats-clear")
        k0, t0 = uplink.rx_packets(), time.time()
        time.sleep(secs - 2)
        k1, t1 = uplink.rx_packets(), time.time()
        cpp = ovs.all_threads_cycles_per_packet()
        stop_generator(p, out)
    finally:
        ovs.stop()
    return (k1 - k0) / (t1 - t0) / 1e6, cpp


def uplink_host_to_vm(work, switch, uplink, size, secs):
    """Host -> VM through an uplink port: testpmd txonly on an af_packet port of
    `uplink.kernel_if` sends `size`-byte frames into the kernel, which hands them to the
    switch's port; the switch floods them to its vhost-user port, where vs-probe `sink`
    (sleeping 20 µs between looks, so that it leaves CPU 0 to the sender) takes and counts
    them. The figure is the median of the sink's per-second counts after the first two, and
    the switch's busy cycles per packet after a 2 s warm-up."""
    work = Path(work)
    sender = ["timeout", "-s", "INT", str(secs + 60), TESTPMD,
              "-l", f"{SWITCH_CPU},{GEN_CPU}", "--main-lcore", str(SWITCH_CPU), "--no-pci",
              "--single-file-segments", "-m", "512", "--file-prefix", "vsbtx",
              "--vdev", f"net_af_packet0,iface={uplink.kernel_if},qpairs=1", "--",
              "--nb-cores=1", "--forward-mode=txonly", f"--eth-peer=0,{mac(9)}",
              f"--txpkts={size}", "--stats-period", "1", f"--burst={GEN_BURST[0]}"]

    def run(sock, accept, cycles):
        sink = subprocess.Popen(
            ["taskset", "-c", str(GEN_CPU), PROBE, "sink", "--a", sock, "--secs",
             str(secs + 2), *(["--accept"] if accept else [])],
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert sink.stdout.readline().strip() == "ready", "vs-probe sink did not start"
        with open(work / "sender.log", "w") as f:
            tx = subprocess.Popen(sender, stdin=subprocess.DEVNULL, stdout=f,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        time.sleep(2)
        c0 = cycles()
        time.sleep(secs - 2)
        c1 = cycles()
        stop_process_group(tx, signal.SIGINT)
        out, _ = sink.communicate(timeout=60)
        clean_hugepages()
        counts = [json.loads(line)["frames"] for line in out.splitlines() if line.startswith("{")]
        counts = [c for c in counts if c > 0][2:]
        mpps = statistics.median(counts) / 1e6 if counts else 0.0
        return mpps, c0, c1

    if switch == "vringswitch":
        vs = Vringswitch(work, nports=1, uplink=uplink)
        try:
            uplink.wait("the uplink's interface")
            mpps, (c0, n0, _), (c1, n1, _) = run(vs.socks[0], False, vs.cycles)
        finally:
            vs.stop()
        return mpps, (c1 - c0) / (n1 - n0) if n1 > n0 else 0.0
    ovs = Ovs(work, nports=1)
    try:
        uplink.add_to_ovs(ovs)

        def clear():
            ovs.appctl("dpif-netdev/pmd-stats-clear")
            return 0

        mpps, _, _ = run(ovs.socks[0], True, clear)
        cpp = ovs.all_threads_cycles_per_packet()
    finally:
        ovs.stop()
    return mpps, cpp


def uplink_part(work, kind, sizes, secs, rounds, switches):
    runs = []
    for r in range(1, rounds + 1):
        for size in sizes:
            for sw in switches:
                if sw == "testpmd":
                    continue
                for direction, measure in (("vm_to_host", uplink_vm_to_host),
                                           ("host_to_vm", uplink_host_to_vm)):
                    uplink = Uplink(kind)
                    try:
                        mpps, cpp = measure(work(), sw, uplink, size, secs)
                    finally:
                        uplink.close()
                    m = {"round": r, "size": size, "switch": sw, "direction": direction,
                         "mpps": mpps, "cpp": cpp}
                    log(f"{kind} round {r} {size} B {sw}: {m}")
                    runs.append(m)
    return runs


# ---------------------------------------------------------------- VXLAN tunnels

# The two tunnel ends: VXLAN_ENDS[0] on XDP_IF, [1] on XDP_PEER, a veth pair in a namespace
# of the bench's own (VXLAN_NS), which both switches' tunnel packets cross.
VXLAN_ENDS = ("10.98.5.1", "10.98.5.2")
VXLAN_NS = "vsbvx"
CLONE_NEWNET = 0x40000000


class Netns:
    """While in the `with`, this process (and what it starts) is in a fresh network
    namespace `name` with lo up and the veth pair XDP_IF/XDP_PEER (MTU 3000, no addresses,
    not even IPv6's link-local ones); the namespace is deleted on the way out, with every
    device a switch made in it."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        import ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)
        subprocess.run(["ip", "netns", "del", self.name], stderr=subprocess.DEVNULL)
        sh("ip", "netns", "add", self.name)
        self.home = os.open("/proc/self/ns/net", os.O_RDONLY)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if self.libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"cannot enter network namespace {self.name}")
        finally:
            os.close(fd)
        sh("ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", XDP_IF, "type", "veth", "peer", "name", XDP_PEER)
        for i in (XDP_IF, XDP_PEER):
            # No address at all, not even IPv6's link-local one: OVS takes a tunnel packet
            # output to a port with an address for its own and decapsulates it there and
            # then, and the underlay would never be crossed.
            sh("ip", "link", "set", i, "addrgenmode", "none")
            sh("ip", "link", "set", i, "mtu", "3000", "up")
        return self

    def __exit__(self, *exc):
        self.libc.setns(self.home, CLONE_NEWNET)
        os.close(self.home)
        subprocess.run(["ip", "netns", "del", self.name], stderr=subprocess.DEVNULL)


def link_info(link):
    """`ip -s link show` of `link` as a dict (/sys shows the namespace it was mounted in,
    not this one)."""
    out = subprocess.run(["ip", "-j", "-s", "link", "show", "dev", link], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)[0]


def link_mac(link):
    return link_info(link)["address"]


def vxlan_hosts(work):
    """Both hosts in one vringswitch: bridge br0 has p0 and a static tunnel from
    VXLAN_ENDS[0] to [1], br1 has p1 and the tunnel back, so that every frame from p0 to p1
    (and back) is encapsulated once and decapsulated once, all on the one worker. Both
    ends are this namespace's own addresses, so the kernel is told to send what this host
    sends to the other end over the veth pair (a routing table consulted before the local
    one for packets of this host's own, static neighbours as OVS's tnl/arp/set) and to
    take packets of a local source address in."""
    a, b = VXLAN_ENDS
    for link, ip in ((XDP_IF, a), (XDP_PEER, b)):
        sh("ip", "addr", "add", f"{ip}/32", "dev", link)
        for knob in ("accept_local=1", "rp_filter=0"):
            sh("sysctl", "-q", "-w", f"net.ipv4.conf.{link}.{knob}")
    sh("sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0")
    sh("ip", "route", "add", b, "dev", XDP_IF, "src", a, "table", "100")
    sh("ip", "route", "add", a, "dev", XDP_PEER, "src", b, "table", "100")
    sh("ip", "rule", "add", "pref", "10", "iif", "lo", "lookup", "100")
    sh("ip", "rule", "add", "pref", "20", "lookup", "local")
    sh("ip", "rule", "del", "pref", "0", "lookup", "local")
    sh("ip", "neigh", "replace", b, "lladdr", link_mac(XDP_PEER), "dev", XDP_IF, "nud", "permanent")
    sh("ip", "neigh", "replace", a, "lladdr", link_mac(XDP_IF), "dev", XDP_PEER, "nud", "permanent")
    tunnels = []
    for name, bridge, local, remote in (("ta", "br0", a, b), ("tb", "br1", b, a)):
        tunnels += ["[[ports]]", f'name = "{name}"', f'bridge = "{bridge}"', 'type = "vxlan"',
                    "vni = 10", f'local = "{local}"', 'control = "static"',
                    f'remotes = ["{remote}"]']
    return Vringswitch(work, 2, extra_lines=tunnels, port_bridges=["br0", "br1"])


def vxlan_vringswitch(work, size, secs):
    """VM to VM through VXLAN (see `vxlan_hosts`): the generator's two ports circulate
    frames p0 -> encap -> veth -> decap -> p1 and back. Returns each port's Mpps, the
    worker's busy cycles per frame it took (a VM's frame or a tunnel packet: half a
    crossing) and the generator's cycles per packet."""
    vs = vxlan_hosts(work)
    try:
        p, out = generator(work, vs.socks, size, secs)
        time.sleep(2)
        c0, n0, _ = vs.cycles()
        k0 = veth_packets()
        time.sleep(secs - 2)
        c1, n1, _ = vs.cycles()
        k1 = veth_packets()
        mpps, gen_cpp = stop_generator(p, out)
        drops = vs.drops()
    finally:
        vs.stop()
    assert k1 > k0, "no tunnel packet crossed the veth pair"
    cpp = (c1 - c0) / (n1 - n0) if n1 > n0 else 0.0
    return mpps, cpp, gen_cpp, drops


def veth_packets():
    return link_info(XDP_PEER)["stats64"]["rx"]["packets"]


# OVS's underlay: each end of the veth pair an AF_XDP port of a bridge whose own (LOCAL)
# interface holds a tunnel end's address, as OVS's userspace tunnelling asks. (OVS routes
# to an address only through a bridge with an address in its prefix.)
OVS_UNDERLAY = (("brp0", XDP_IF, VXLAN_ENDS[0]), ("brp1", XDP_PEER, VXLAN_ENDS[1]))


def vxlan_ovs(work, size, secs):
    """The same loop through OVS-DPDK's userspace VXLAN (`type=vxlan`): br0 has o0 and a
    tunnel to VXLAN_ENDS[1], br1 has o1 and the tunnel back. The tunnel packets cross the
    veth pair between two underlay bridges (brp0, brp1), each end an AF_XDP port (OVS's
    userspace datapath has no faster way to a kernel link); OVS routes and resolves the
    ends itself (ovs/route/add, tnl/arp/set). One PMD polls it all: returns each port's
    Mpps, OVS's processing cycles per packet received (a VM's frame or a tunnel packet, as
    vringswitch's figure) and the generator's cycles per packet."""
    ovs = Ovs(work, nports=2, port_bridges=["br0", "br1"])
    try:
        for br, link, ip in OVS_UNDERLAY:
            ovs.add_bridge(br)
            ovs.vsctl("add-port", br, link, "--", "set", "Interface", link, "type=afxdp",
                      "options:xdp-mode=native", "mtu_request=3000")
            wait_for(lambda: subprocess.run(["ip", "link", "show", "dev", br],
                                            capture_output=True).returncode == 0,
                     f"OVS's bridge {br}")
            sh("ip", "addr", "add", f"{ip}/24", "dev", br)
            sh("ip", "link", "set", br, "mtu", "3000", "up")
            # The kernel's routes for the address (local, and its prefix) would outrank
            # OVS's own ones below: both ends are in this one namespace.
            sh("ip", "route", "del", "table", "local", ip, "dev", br)
            subprocess.run(["ip", "route", "del", f"{ip.rsplit('.', 1)[0]}.0/24", "dev", br],
                           stderr=subprocess.DEVNULL)
        (pa, _, a), (pb, _, b) = OVS_UNDERLAY
        # No local_ip: OVS would want it a local route of the kernel's, which would take
        # the other end's address too (one namespace); the route's source stands for it.
        for br, remote in (("br0", b), ("br1", a)):
            ovs.vsctl("add-port", br, f"vx{br[-1]}", "--", "set", "Interface", f"vx{br[-1]}",
                      "type=vxlan", f"options:remote_ip={remote}", "options:key=10")
        ovs.appctl("ovs/route/add", f"{b}/32", pa)
        ovs.appctl("ovs/route/add", f"{a}/32", pb)
        ovs.appctl("tnl/arp/set", pa, b, link_mac(pb))
        ovs.appctl("tnl/arp/set", pb, a, link_mac(pa))
        p, out = generator(work, ovs.socks, size, secs, server=True)
        time.sleep(2)
        ovs.appctl("dpif-netdev/pmd-stats-clear")
        k0 = veth_packets()
        time.sleep(secs - 2)
        k1 = veth_packets()
        cpp = ovs.all_threads_cycles_per_packet()
        mpps, gen_cpp = stop_generator(p, out)
    finally:
        ovs.stop()
    assert k1 > k0, "no tunnel packet crossed the veth pair"
    return mpps, cpp, gen_cpp, {}


def vxlan_tso_vringswitch(work, secs):
    """vs-probe tso --segment from p0 to p1 through the tunnels (see `vxlan_hosts`): each
    65214-byte TSO frame is cut by the switch into 45 segments (their checksums computed)
    for the tunnel, which sends them as one UDP GSO message; the other end takes them as
    one message (GRO) and delivers 45 frames to B. Returns A's frames per second, the
    Gbps into B and the worker's busy cycles per frame A sent (both ends' work)."""
    vs = vxlan_hosts(work)
    try:
        probe = subprocess.Popen(
            ["taskset", "-c", str(GEN_CPU), PROBE, "tso", "--a", vs.socks[0], "--b",
             vs.socks[1], "--secs", str(secs), "--segment"],
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert probe.stdout.readline().strip() == "ready", "vs-probe tso did not start"
        time.sleep(2)
        c0, _, _ = vs.cycles()
        t0 = time.time()
        time.sleep(secs - 3)
        c1, _, _ = vs.cycles()
        t1 = time.time()
        out, _ = probe.communicate(timeout=60)
        drops = vs.drops()
    finally:
        vs.stop()
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")][2:]
    fps = statistics.median(x["frames"] for x in lines) if lines else 0
    rx = statistics.median(x["rx_bytes"] for x in lines) if lines else 0
    cpf = (c1 - c0) / (t1 - t0) / fps if fps else 0.0
    return {"switch": "vringswitch", "frames_per_s": fps, "gbps": rx * 8 / 1e9,
            "cycles_per_frame": cpf, "drops": drops}


def vxlan_part(work, sizes, secs, rounds, switches):
    runs = []
    for r in range(1, rounds + 1):
        for size in sizes:
            for sw in switches:
                if sw == "testpmd":
                    continue
                measure = vxlan_vringswitch if sw == "vringswitch" else vxlan_ovs
                with Netns(VXLAN_NS):
                    mpps, cpp, gen_cpp, drops = measure(work(), size, secs)
                m = {"round": r, "size": size, "switch": sw, "mpps_ports": mpps,
                     "cpp": cpp, "gen_cpp": gen_cpp, "drops": drops}
                log(f"vxlan round {r} {size} B {sw}: {m}")
                runs.append(m)
        if "vringswitch" in switches:
            with Netns(VXLAN_NS):
                m = vxlan_tso_vringswitch(work(), secs)
            m.update(memcpy_limit())
            m["round"], m["size"] = r, "tso"
            log(f"vxlan round {r} TSO: {m}")
            runs.append(m)
    return runs


def vxlan_report(res, L):
    runs = res.get("vxlan")
    if not runs:
        return
    L.append("\n### VXLAN, VM to VM through two tunnel ends (encap and decap on one core)\n")
    L.append("Both hosts in one switch (bridge br0: port 0 and a static tunnel from 10.98.5.1 "
             "to 10.98.5.2; br1: port 1 and the tunnel back), the tunnel packets crossing a "
             "veth pair in a namespace of the bench's own; testpmd's two ports circulate "
             "frames both ways. OVS-DPDK 3.1: the same bridges with `type=vxlan` ports, "
             "its underlay two bridges whose AF_XDP ports (`xdp-mode=native`) are the veth "
             "pair's ends, routes and neighbours set with `ovs/route/add` and `tnl/arp/set`; "
             "its processing cycles per packet received. A VM-to-VM crossing is two frames "
             "taken (the VM's, then the tunnel packet). Both ways together: the two loops "
             "run at different rates.\n")
    L.append("| size | switch | Mpps, both ways | busy cycles per frame taken | per crossing | rounds |")
    L.append("|---|---|---|---|---|---|")
    frames = [m for m in runs if m["size"] != "tso"]
    for size in dict.fromkeys(m["size"] for m in frames):
        for sw in dict.fromkeys(m["switch"] for m in frames):
            ms = [m for m in frames if m["size"] == size and m["switch"] == sw and any(m["mpps_ports"])]
            if not ms:
                continue
            mpps = statistics.median(sum(m["mpps_ports"]) for m in ms)
            cpp = statistics.median(m["cpp"] for m in ms)
            L.append(f"| {size} B | {sw} | {mpps:.2f} | {cpp:.0f} | {2 * cpp:.0f} | {len(ms)} |")
    tso = [m for m in runs if m["size"] == "tso"]
    if tso:
        L.append("\nTSO through the tunnel: vs-probe `tso --segment` from port 0 to port 1, "
                 "65214-byte frames (45 segments of 1448) cut and checksummed by the switch "
                 "for the tunnel, sent as one UDP GSO message, taken as one GRO message and "
                 "delivered as 45 frames; busy cycles per frame A sent (both ends), against "
                 "a memcpy of the frame on the switch's core.\n")
        L.append("| round | frames/s | Gbps into B | busy cycles/frame | memcpy cycles | vs memcpy |")
        L.append("|---|---|---|---|---|---|")
        for m in tso:
            L.append(f"| {m['round']} | {m['frames_per_s']:.0f} | {m['gbps']:.1f} "
                     f"| {m['cycles_per_frame']:.0f} | {m['cycles_per_copy']:.0f} "
                     f"| {ratio(m['cycles_per_frame'], m['cycles_per_copy']):.2f} |")


# ---------------------------------------------------------------- TSO, VM to VM


def tso_run(work, switch, secs, segment=False):
    """vs-probe tso between two ports of `switch` for `secs`: the median of A's frames per
    second and of B's received bytes per second after the first two, and the switch's busy
    cycles per frame A sent, after a 2 s warm-up."""
    extra = ["--segment"] if segment else []

    def run(a, b, accept, cycles):
        probe = subprocess.Popen(
            ["taskset", "-c", str(GEN_CPU), PROBE, "tso", "--a", a, "--b", b, "--secs",
             str(secs), *extra, *(["--accept"] if accept else [])],
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert probe.stdout.readline().strip() == "ready", "vs-probe tso did not start"
        time.sleep(2)
        c0 = cycles()
        time.sleep(secs - 3)
        c1 = cycles()
        out, _ = probe.communicate(timeout=60)
        lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")][2:]
        fps = statistics.median(x["frames"] for x in lines) if lines else 0
        rx = statistics.median(x["rx_bytes"] for x in lines) if lines else 0
        return fps, rx, c0, c1

    if switch == "vringswitch":
        vs = Vringswitch(work)
        try:
            fps, rx, (c0, n0, _), (c1, n1, _) = run(vs.socks[0], vs.socks[1], False, vs.cycles)
        finally:
            vs.stop()
        cpf = (c1 - c0) / (n1 - n0) if n1 > n0 else 0.0
    else:
        ovs = Ovs(work, tso=True)
        try:
            def clear():
                ovs.appctl("dpif-netdev/pmd-stats-clear")
                return 0
            fps, rx, _, _ = run(ovs.socks[0], ovs.socks[1], True, clear)
            cpf = ovs.processing_cycles_per_packet()
        finally:
            ovs.stop()
    return {"switch": switch, "segment": segment, "frames_per_s": fps,
            "gbps": rx * 8 / 1e9, "cycles_per_frame": cpf}


def dirty_log_run(work, size, secs, logging):
    """vs-probe stream through vringswitch for `secs`, the VMs logging dirty pages or not:
    the median Mpps per port over the seconds after the first two, and the worker's busy
    cycles per packet and frames per burst after a 2 s warm-up."""
    vs = Vringswitch(work)
    try:
        out, (c0, n0, b0), (c1, n1, b1) = probe_run(
            vs, "stream", secs, "--size", str(size), *(["--dirty-log"] if logging else []))
    finally:
        vs.stop()
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")][2:]
    mpps = statistics.median((x["a"] + x["b"]) / 2 for x in lines) / 1e6 if lines else 0.0
    return {"size": size, "logging": logging, "mpps": mpps,
            "cpp": (c1 - c0) / (n1 - n0) if n1 > n0 else 0.0,
            "burst": (n1 - n0) / (b1 - b0) if b1 > b0 else 0.0}


def dirty_log_part(work, secs, rounds):
    runs = []
    for r in range(1, rounds + 1):
        for size in (64, 1518):
            for logging in (False, True):
                m = dirty_log_run(work(), size, secs, logging)
                m["round"] = r
                log(f"dirty log round {r}: {m}")
                runs.append(m)
    return runs


MIGRATIONS_PER_RUN = 4
MIGRATION_PROBE = str(ROOT / "target/release/vs-migration")


def need_guests():
    """QEMU and what the test guest is built from (tests/guest/build-guest.sh)."""
    need = [pkg for pkg, path in (("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
                                  ("busybox-static", "/bin/busybox"), ("cpio", "/usr/bin/cpio"))
            if not Path(path).exists()]
    if need:
        log(f"installing {' '.join(need)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        sh("apt-get", "update", "-q", env=env, stdout=subprocess.DEVNULL)
        sh("apt-get", "install", "-y", "-q", "--no-install-recommends", *need, env=env,
           stdout=subprocess.DEVNULL)


# What each migration run is named in the report, and vs-migration's arguments for it.
MIGRATION_SETUPS = {
    "vringswitch": ["--switch", "vringswitch"],
    "vringswitch, SEND_RARP": ["--switch", "vringswitch", "--guest-announce", "off"],
    "tap": ["--switch", "tap"],
}


def migration_run(work, setup):
    """vs-migration: MIGRATIONS_PER_RUN migrations of one guest, as MIGRATION_SETUPS[setup]
    says; one dict per migration."""
    env = dict(os.environ, VRINGSWITCH_BIN=os.environ.get("VRINGSWITCH_BIN")
               or str(ROOT / "target/release/vringswitch"))
    p = subprocess.run([MIGRATION_PROBE, *MIGRATION_SETUPS[setup], "--migrations",
                        str(MIGRATIONS_PER_RUN), "--dir", str(work)],
                       capture_output=True, text=True, env=env, timeout=1200)
    if p.returncode != 0:
        raise SystemExit(f"vs-migration ({setup}) failed:\n{p.stderr[-3000:]}")
    runs = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    for m in runs:
        m["switch"] = setup
    return runs


def migration_part(work, rounds):
    need_guests()
    runs = []
    for r in range(1, rounds + 1):
        for setup in MIGRATION_SETUPS:
            for m in migration_run(work(), setup):
                m["round"] = r
                log(f"migration round {r}: {m}")
                runs.append(m)
    return runs


def memcpy_limit(secs=3):
    out = subprocess.run([PROBE, "memcpy", "--core", str(SWITCH_CPU), "--secs", str(secs)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def tso_part(work, secs, rounds, switches):
    runs = []
    for r in range(1, rounds + 1):
        for sw, segment in [(s, False) for s in switches if s != "testpmd"] + (
                [("vringswitch", True)] if "vringswitch" in switches else []):
            m = tso_run(work(), sw, secs, segment)
            m["round"] = r
            log(f"tso round {r}: {m}")
            runs.append(m)
        m = memcpy_limit()
        m["round"] = r
        log(f"memcpy round {r}: {m}")
        runs.append(m)
    return runs


# ---------------------------------------------------------------- scaling and flooding


def scaling(work, nports, secs, vlans=None):
    mpps, cpp, burst, _ = measure_vringswitch(work, 64, secs, nports, vlans)
    return {"ports": nports, "mpps_total": sum(mpps), "cycles_per_packet": cpp, "burst": burst}


def median_scaling(runs):
    """One setup's scaling rows over the rounds, as one row of medians."""
    med = statistics.median
    row = {"label": runs[0]["label"], "ports": runs[0]["ports"],
           "mpps_total": med(s["mpps_total"] for s in runs),
           "cycles_per_packet": med(s["cycles_per_packet"] for s in runs),
           "burst": med(s["burst"] for s in runs)}
    t = [s["testpmd"] for s in runs if "testpmd" in s]
    if t:
        row["testpmd"] = {"ports": row["ports"], "mpps_total": med(x["mpps_total"] for x in t),
                          "cycles_per_packet": med(x["cycles_per_packet"] for x in t)}
    return row


def scaling_testpmd(work, nports, secs):
    """The anchor's scaling: testpmd io-fwd with `nports` vhost ports (paired 0-1, 2-3, ...,
    as the generator's), same traffic. Its cost per packet at 32 ports against 2 says what
    the rings and buffers of more ports cost a switch that makes no decision."""
    sw = TestpmdSwitch(work, nports)
    try:
        mpps, _ = run_generator(work, sw.socks, 64, secs)
    finally:
        cpp = sw.stop()
    return {"ports": nports, "mpps_total": sum(mpps), "cycles_per_packet": cpp}


def flooding(work, nports, secs):
    """Every port sends broadcasts: one generator (mac forwarding, every peer address
    ff:ff:ff:ff:ff:ff, --tx-first) owns all ports, so each frame a port receives goes back
    out as a broadcast and the switch floods it to the other nports - 1. One process polls
    every receiver, so no receiver waits for a CPU. Cost per flooded frame and per copy
    delivered (copies refused for want of RX buffers cost less and are counted apart)."""
    vs = Vringswitch(work, nports)
    try:
        p, out = generator(work, vs.socks, 64, secs, peers={i: "ff:ff:ff:ff:ff:ff" for i in range(nports)})
        time.sleep(2)
        s0 = vs.stats()
        time.sleep(secs - 2)
        s1 = vs.stats()
        stop_generator(p, out)
    finally:
        vs.stop()

    def total(s, f):
        return sum(f(p) for p in s["ports"])

    busy = s1["workers"][0]["busy_cycles"] - s0["workers"][0]["busy_cycles"]
    frames = s1["workers"][0]["packets"] - s0["workers"][0]["packets"]
    # Ports count from the switch's side: tx_packets are frames delivered to the VM.
    delivered = total(s1, lambda p: p["tx_packets"]) - total(s0, lambda p: p["tx_packets"])
    dropped = total(s1, lambda p: sum(p["drops"].values())) - total(s0, lambda p: sum(p["drops"].values()))
    return {"ports": nports, "frames_per_s": frames / (secs - 2),
            "cycles_per_frame": busy / frames if frames else 0.0,
            "cycles_per_copy": busy / delivered if delivered else 0.0,
            "delivered_per_frame": delivered / frames if frames else 0.0,
            "dropped_per_frame": dropped / frames if frames else 0.0}


# ---------------------------------------------------------------- idle and latency


PROBE = str(ROOT / "target/release/vs-probe")


def cpu_ticks(pid):
    """utime + stime of every thread of `pid`, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def idle_cpu(work, switch, secs=10):
    """% of one core the switch uses with two connected ports and no traffic."""
    sw, accept = start_switch(work, switch)
    try:
        probe = subprocess.Popen(
            ["taskset", "-c", str(GEN_CPU), PROBE, "hold", "--a", sw.socks[0], "--b",
             sw.socks[1], "--secs", str(secs + 5), *accept],
            stdout=subprocess.PIPE, text=True,
        )
        if probe.stdout.readline().strip() != "ready":
            raise SystemExit(f"vs-probe could not attach to {switch}")
        time.sleep(2)
        pid = switch_pid(sw)
        t0 = cpu_ticks(pid)
        time.sleep(secs)
        t1 = cpu_ticks(pid)
        probe.kill()
        probe.wait()
    finally:
        sw.stop()
    return 100.0 * (t1 - t0) / os.sysconf("SC_CLK_TCK") / secs


def start_switch(work, switch):
    if switch == "vringswitch":
        return Vringswitch(work), []
    if switch == "testpmd":
        return TestpmdSwitch(work), []
    ovs = Ovs(work)
    for s in ovs.socks:
        Path(s).unlink(missing_ok=True)
    return ovs, ["--accept"]


def switch_pid(sw):
    if isinstance(sw, Ovs):
        return int((sw.dir / "vswitchd.pid").read_text())
    return sw.p.pid


def latency(work, switch, samples, interval_us):
    sw, accept = start_switch(work, switch)
    try:
        out = subprocess.run(
            ["taskset", "-c", str(GEN_CPU), PROBE, "latency", "--a", sw.socks[0], "--b",
             sw.socks[1], "--samples", str(samples), "--interval-us", str(interval_us), *accept],
            check=True, capture_output=True, text=True, timeout=samples * interval_us / 1e6 + 120,
        ).stdout
    finally:
        sw.stop()
    return json.loads(out)


# ---------------------------------------------------------------- report


def ratio(a, b):
    return a / b if b else 0.0


def report(res):
    """Markdown for docs/benchmarks.md's results section."""
    L = []
    env = res["machine"]
    tsc = f", TSC {res['tsc_hz'] / 1e9:.3f} GHz" if res.get("tsc_hz") else ""
    L.append(f"Run {res['date']} at commit `{res['commit']}` on {env}{tsc}, "
             f"{res['secs']} s per measurement, {res['rounds']} rounds, generator burst "
             f"{res.get('gen_burst', 32)}.\n")
    if res["summary"]:
        throughput_report(res, L)
    scaling_report(res, L)
    latency_report(res, L)
    capture_report(res, L)
    policing_report(res, L)
    mirror_report(res, L)
    upgrade_report(res, L)
    sg_report(res, L)
    for kind in UPLINKS:
        uplink_report(res, L, kind)
    tso_report(res, L)
    vxlan_report(res, L)
    dirty_log_report(res, L)
    migration_report(res, L)
    return "\n".join(L)


def migration_report(res, L):
    if not res.get("migration"):
        return
    L.append("### Live migration downtime (QEMU guest, TCG, between two ports)\n")
    L.append("vs-migration: guest A (1 vCPU, 256 MiB, idle but for answering pings) migrates "
             f"{MIGRATIONS_PER_RUN} times per run between two ports, each time into a new QEMU "
             "over a unix socket, while guest B pings it every 10 ms. vringswitch: two "
             "server-mode vhost-user ports; the guest announces itself (GUEST_ANNOUNCE), or "
             "with `guest_announce=off` on its NIC QEMU asks the switch to (SEND_RARP). tap: "
             "QEMU 7.2's own userspace virtio-net on TAP interfaces of a Linux bridge, no "
             "vhost-user backend at all (QEMU writes its RARP straight onto the TAP). Downtime "
             "is QEMU's (`info migrate`); the bridge's move is timed from the guest seen running "
             "on the target to the bridge (vringswitch's API, the Linux bridge's brforward) "
             "having its MAC on the new port; lost pings are counted on B from the ping round "
             "before the migration to the first whole round after it. Medians over all "
             "migrations.\n")
    L.append("| NIC | migrations | QEMU downtime ms, median (min-max) | bridge moved ms after "
             "running, median (max) | lost 10 ms pings, median (min-max) | migration ms, median |")
    L.append("|---|---|---|---|---|---|")
    med = {}
    for setup in MIGRATION_SETUPS:
        ms = [m for m in res["migration"] if m["switch"] == setup]
        if not ms:
            continue
        d = [m["downtime_ms"] for m in ms]
        fdb = [m["fdb_after_ms"] for m in ms]
        lost = [m["lost_pings"] for m in ms]
        med[setup] = (statistics.median(d), statistics.median(lost))
        L.append(f"| {setup} | {len(ms)} | {statistics.median(d):.0f} ({min(d)}-{max(d)}) "
                 f"| {statistics.median(fdb):.0f} ({max(fdb)}) "
                 f"| {statistics.median(lost):.0f} ({min(lost)}-{max(lost)}) "
                 f"| {statistics.median(m['took_ms'] for m in ms):.0f} |")
    if "tap" in med:
        dt, lt = med["tap"]
        for setup, (dv, lv) in med.items():
            if setup != "tap":
                L.append(f"\n{setup} against tap: downtime {dv - dt:+.0f} ms, "
                         f"lost pings {lv - lt:+.0f}.")
    L.append("")


def dirty_log_report(res, L):
    if not res.get("dirtylog"):
        return
    L.append("### Logging dirty pages for a live migration (loopback, off against on)\n")
    L.append("vs-probe `stream`: two test VMs on CPU 0 keep 128 frames each in flight to each "
             "other; with logging on both negotiated LOG_SHMFD and log dirty pages (LOG_ALL, "
             "every ring's log flag), clearing the log every 100 ms, as QEMU does while a "
             "migration copies memory. Frames per burst say who set the pace (32, every burst "
             "full: the switch). Medians over the rounds.\n")
    L.append("| frame B | Mpps per port off / on | busy cyc/pkt off / on | cycles on/off "
             "| frames/burst off / on |")
    L.append("|---|---|---|---|---|")
    for size in sorted({m["size"] for m in res["dirtylog"]}):
        med = {}
        for logging in (False, True):
            rs = [m for m in res["dirtylog"] if m["size"] == size and m["logging"] == logging]
            med[logging] = {k: statistics.median(m[k] for m in rs) for k in ("mpps", "cpp", "burst")}
        off, on = med[False], med[True]
        L.append(f"| {size} | {off['mpps']:.3f} / {on['mpps']:.3f} | {off['cpp']:.0f} / "
                 f"{on['cpp']:.0f} | {ratio(on['cpp'], off['cpp']):.2f} | {off['burst']:.1f} / "
                 f"{on['burst']:.1f} |")
    L.append("")


def tso_report(res, L):
    if not res.get("tso"):
        return
    L.append("### TSO frames VM to VM (65214-byte frames: 45 segments of 1448)\n")
    L.append("vs-probe `tso`: VM A (CSUM, HOST_TSO4) keeps 32 TSO frames in flight to VM B "
             "(GUEST_CSUM, GUEST_TSO4, 16 KiB mergeable buffers), both giving chains back as "
             "soon as they are used. OVS-DPDK 3.1 with `userspace-tso-enable=true` "
             "(dpdkvhostuserclient ports; its processing cycles per packet). \"cut\": "
             "vringswitch to a B that takes no offload, 4 frames in flight, every frame cut "
             "into 45 segments and checksummed by the switch. memcpy: the same frame copied "
             "on the switch's core between buffers of the same footprint, the limit of one "
             "copy.\n")
    L.append("| round | switch | frames/s | Gbps into B | busy cycles/frame | vs memcpy |")
    L.append("|---|---|---|---|---|---|")
    by_round = {}
    for m in res["tso"]:
        if "cycles_per_copy" in m:
            by_round[m["round"]] = m["cycles_per_copy"]
    for m in res["tso"]:
        copy = by_round.get(m["round"], 0)
        if "cycles_per_copy" in m:
            L.append(f"| {m['round']} | memcpy | | | {m['cycles_per_copy']:.0f} | 1.00 |")
            continue
        name = m["switch"] + (" (cut)" if m["segment"] else "")
        L.append(f"| {m['round']} | {name} | {m['frames_per_s']:.0f} | {m['gbps']:.1f} "
                 f"| {m['cycles_per_frame']:.0f} | {ratio(m['cycles_per_frame'], copy):.2f} |")
    L.append("")


UPLINK_TEXT = {
    "tap": ("TAP port", f"a TAP interface ({TAP_IF})", "a `type=tap` port (polled by its "
            "main thread)", "Both switches pay one write(2) per frame into the kernel."),
    "afxdp": ("AF_XDP port", f"an AF_XDP socket on one end of a veth pair ({XDP_IF}, XDP in "
              f"veth's driver, no zero-copy), counted at the other end ({XDP_PEER})",
              "a `type=afxdp` port with `xdp-mode=native` (polled by its PMD thread)",
              "Both switches copy each frame once between the socket's UMEM and the VM, and "
              "wake the kernel with sendto(2) once per burst."),
}


def uplink_report(res, L, kind):
    if not res.get(kind):
        return
    title, port, ovs_port, note = UPLINK_TEXT[kind]
    L.append(f"### {title} (Mpps; busy cycles per packet)\n")
    L.append("testpmd txonly on a virtio_user port of the switch sends to an unknown MAC, "
             f"flooded to the bridge's only other port, {port}; the figure is what the "
             f"kernel received (rx_packets). OVS-DPDK 3.1: {ovs_port} and a "
             "dpdkvhostuserclient port; its cycles are every thread's processing cycles over "
             f"packets. {note}\n")
    L.append("Host -> VM: testpmd txonly on an af_packet port of the kernel's interface; "
             "vs-probe `sink` on the vhost-user port counts what arrives.\n")
    L.append("| round | frame B | switch | direction | Mpps | busy cycles/pkt |")
    L.append("|---|---|---|---|---|---|")
    for m in res[kind]:
        L.append(f"| {m['round']} | {m['size']} | {m['switch']} "
                 f"| {m.get('direction', 'vm_to_host')} | {m['mpps']:.3f} | {m['cpp']:.0f} |")
    L.append("")


def capture_report(res, L):
    if not res.get("capture"):
        return
    L.append("### Packet capture (loopback with port p0 captured, against no capture)\n")
    L.append("Port p0 captured both ways with a 128-byte snaplen by `vringctl capture -w "
             f"/dev/null` on CPU {GEN_CPU} (the generator's), interleaved with runs without; "
             "medians. Frames the capture could not keep are counted, not waited for.\n")
    L.append("| frame B | Mpps per port off / on | busy cyc/pkt off / on | cycles on/off "
             "| what each capture kept |")
    L.append("|---|---|---|---|---|")
    for c in res["capture"]:
        off, on = c["median"]["off"], c["median"]["on"]
        kept = "; ".join(r["capture"].removeprefix("vringctl: ") for r in c["runs"]["on"])
        L.append(f"| {c['size']} | {off['mpps']:.3f} / {on['mpps']:.3f} "
                 f"| {off['cpp']:.0f} / {on['cpp']:.0f} | {ratio(on['cpp'], off['cpp']):.2f} "
                 f"| {kept} |")
    L.append("")


def policing_report(res, L):
    if not res.get("policing"):
        return
    L.append("### Policing (loopback with both ports policed both ways, against none)\n")
    L.append("Every port has `police_rx` and `police_tx` of bits and frames at 100 Gbit/s and "
             "100 Mframes/s, rates the loop never reaches: each burst draws from four buckets "
             "and no frame is dropped. Interleaved with runs without; medians.\n")
    L.append("| frame B | Mpps per port off / on | busy cyc/pkt off / on | cycles on/off |")
    L.append("|---|---|---|---|")
    for c in res["policing"]:
        off, on = c["median"]["off"], c["median"]["on"]
        L.append(f"| {c['size']} | {off['mpps']:.3f} / {on['mpps']:.3f} "
                 f"| {off['cpp']:.0f} / {on['cpp']:.0f} | {ratio(on['cpp'], off['cpp']):.2f} |")
    L.append("")


def throughput_report(res, L):
    L.append("### Throughput (loopback, Mpps per port; busy cycles per packet)\n")
    L.append("Medians over the rounds. Ratios are vringswitch over the anchor: above 1 is "
             "better for Mpps, below 1 is better for cycles.\n")
    L.append("| frame B | vringswitch Mpps | testpmd Mpps | OVS Mpps | vs/testpmd | vs/OVS "
             "| vringswitch cyc/pkt | testpmd cyc/pkt | OVS cyc/pkt | cyc vs/testpmd | cyc vs/OVS |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for size, s in res["summary"].items():
        v, t, o = (s[k] for k in SWITCHES)
        L.append(f"| {size} | {v['mpps']:.3f} | {t['mpps']:.3f} | {o['mpps']:.3f} "
                 f"| {ratio(v['mpps'], t['mpps']):.2f} | {ratio(v['mpps'], o['mpps']):.2f} "
                 f"| {v['cpp']:.0f} | {t['cpp']:.0f} | {o['cpp']:.0f} "
                 f"| {ratio(v['cpp'], t['cpp']):.2f} | {ratio(v['cpp'], o['cpp']):.2f} |")
    L.append("\nEvery measurement, in the order taken:\n")
    L.append("Busy shares are cycles per packet times packets per second, over the TSC rate: "
             "a switch short of 100% waited for frames, so its Mpps measured the loop (the "
             "generator's core and the frames in flight) more than the switch.\n")
    L.append("| round | frame B | switch | Mpps port 0 / port 1 | busy cycles/pkt | switch core busy "
             "| frames per burst | generator cycles/pkt | generator core busy |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for m in res["throughput"]:
        ports = " / ".join(f"{x:.3f}" for x in m["mpps_ports"])
        burst = f"{m['burst']:.1f}" if m.get("burst") else ""
        gen = m.get("gen_cpp", 0.0)
        if not balanced(m):
            ports += " (unbalanced: left out of the medians)"
        L.append(f"| {m['round']} | {m['size']} | {m['switch']} | {ports} | {m['cpp']:.0f} "
                 f"| {core_busy(m['cpp'], m['mpps_ports'])} | {burst} "
                 f"| {gen:.0f} | {core_busy(gen, m['mpps_ports'])} |")
    L.append("\n![throughput and cycles per packet](benchmarks.png)\n")


def scaling_report(res, L):
    if res.get("scaling"):
        L.append("### Scaling (64 B, every port carrying traffic; medians over the rounds)\n")
        L.append("testpmd io-fwd with as many vhost ports, same traffic, measured after each "
                 "vringswitch row: what more ports cost a switch that makes no decision.\n")
        L.append("| setup | ports | total Mpps | busy cycles/pkt | vs 2 ports | frames per burst "
                 "| testpmd total Mpps | testpmd cycles/pkt | testpmd vs its 2 ports |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        base = res["scaling"][0]["cycles_per_packet"]
        tbase = res["scaling"][0].get("testpmd", {}).get("cycles_per_packet", 0.0)
        for s in res["scaling"]:
            t = s.get("testpmd")
            anchor = (f"{t['mpps_total']:.3f} | {t['cycles_per_packet']:.0f} "
                      f"| {ratio(t['cycles_per_packet'], tbase):.2f}") if t else " | | "
            L.append(f"| {s['label']} | {s['ports']} | {s['mpps_total']:.3f} "
                     f"| {s['cycles_per_packet']:.0f} | {ratio(s['cycles_per_packet'], base):.2f} "
                     f"| {s.get('burst', 0):.1f} | {anchor} |")
        if len(res.get("scaling_runs", [])) > len(res["scaling"]):
            L.append("\nBusy cycles/pkt in each round, vringswitch (testpmd): " + "; ".join(
                f"{s['label']} round {s['round']}: {s['cycles_per_packet']:.0f}"
                + (f" ({s['testpmd']['cycles_per_packet']:.0f})" if "testpmd" in s else "")
                for s in res["scaling_runs"]) + ".")
        f = res.get("flood")
        if f:
            L.append(f"\nFlooding: {f['ports']} ports each send back every frame they receive as a "
                     f"64 B broadcast, so each frame goes to {f['ports'] - 1} ports: "
                     f"{f['frames_per_s'] / 1e6:.3f} M frames/s "
                     f"taken, {f['cycles_per_frame']:.0f} busy cycles per flooded frame, "
                     f"{f['cycles_per_copy']:.0f} per copy delivered "
                     f"({f['delivered_per_frame']:.1f} copies delivered and "
                     f"{f['dropped_per_frame']:.1f} dropped per frame; drops are receivers "
                     f"with no buffer left).\n")


def latency_report(res, L):
    if res.get("idle") or res.get("latency"):
        L.append("### Idle and latency\n")
        L.append("| switch | idle CPU, % of a core | one way p50 / p99 µs | round trip p50 / p99 µs |")
        L.append("|---|---|---|---|")
        for sw in SWITCHES:
            idle = res.get("idle", {}).get(sw)
            lat = res.get("latency", {}).get(sw)
            cells = [f"{idle:.1f}" if idle is not None else "not measured"]
            for k in ("one_way_us", "rtt_us"):
                cells.append(f"{lat[k]['p50']:.1f} / {lat[k]['p99']:.1f}" if lat else "not measured")
            L.append(f"| {sw} | " + " | ".join(cells) + " |")
        if res.get("latency"):
            n = res["latency_samples"]
            L.append(f"\nLatency: {n} frames of 64 B, one every ms (vs-probe: two test VMs on "
                     f"CPU {GEN_CPU}). At this rate vringswitch's worker sleeps between frames "
                     "(it polls for 200 µs after the last one), so every frame wakes it.\n")
        w = res.get("wakeup")
        if w:
            L.append(f"Wake-up (first frame after 1 s of idle, {w['samples']} samples): "
                     f"one way p50 {w['one_way_us']['p50']:.1f} µs, p99 "
                     f"{w['one_way_us']['p99']:.1f} µs, max {w['one_way_us']['max']:.1f} µs.\n")
    fl = res.get("wake_floor")
    if fl:
        L.append(f"The floor under any sleeping switch on this machine (vs-probe `floor`: a thread "
                 f"on CPU {SWITCH_CPU} blocked on an eventfd, written after 1 s of idle, "
                 f"{fl['samples']} samples): p50 {fl['one_way_us']['p50']:.1f} µs, p99 "
                 f"{fl['one_way_us']['p99']:.1f} µs. It is the time the hypervisor takes to run "
                 f"a halted vCPU again.\n")


def chart(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(res["summary"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.27
    for i, sw in enumerate(SWITCHES):
        xs = [j + (i - 1) * width for j in range(len(sizes))]
        ax1.bar(xs, [res["summary"][s][sw]["mpps"] for s in sizes], width, label=sw)
        ax2.bar(xs, [res["summary"][s][sw]["cpp"] for s in sizes], width, label=sw)
    for ax, title in ((ax1, "loopback Mpps per port (higher is better)"),
                      (ax2, "switch busy cycles per packet (lower is better)")):
        ax.set_xticks(range(len(sizes)), [f"{s} B" for s in sizes])
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"vringswitch vs testpmd io-fwd vs OVS-DPDK, {res['date']}, {res['commit']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def write_docs(res):
    doc = ROOT / "docs/benchmarks.md"
    text = doc.read_text()
    begin, end = "<!-- bench/run.py results: begin -->", "<!-- bench/run.py results: end -->"
    body = f"{begin}\n{report(res)}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: body, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n## Latest full run\n\n" + body + "\n"
    doc.write_text(text)
    chart(res, ROOT / "docs/benchmarks.png")


# ---------------------------------------------------------------- main


def machine():
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return f"{os.cpu_count()} vCPUs ({cpu.group(1) if cpu else '?'}), {mem / 2**20:.0f} GiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--secs", type=int, default=8, help="seconds per throughput measurement")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--retries", type=int, default=2,
                    help="throughput measurements taken again, at most this many times, when "
                         "the loop came out unbalanced (a port's first burst lost)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 512, 1518])
    ap.add_argument("--switches", nargs="+", default=list(SWITCHES), choices=SWITCHES)
    ap.add_argument("--only", choices=["throughput", "scaling", "idle", "latency", "capture",
                                       "tso", "dirtylog", "migration", "policing", "mirror",
                                       "upgrade", "secgroups", "vxlan", *UPLINKS],
                    action="append", help="run only these parts (repeatable)")
    ap.add_argument("--gen-burst", type=int, default=32,
                    help="the generator's burst, and so the frames each port has in flight "
                         "(--tx-first sends one burst per port); the default 32 leaves every "
                         "switch but the slowest waiting on the loop part of the time")
    ap.add_argument("--report", metavar="JSON",
                    help="measure nothing: report the results saved by an earlier --json")
    ap.add_argument("--no-docs", action="store_true", help="print the report, leave docs/ alone")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()
    if args.report:
        res = json.loads(Path(args.report).read_text())
        res["summary"] = {}
        if res["throughput"]:
            summarize(res)
        TSC_HZ[0] = res.get("tsc_hz", 0)
        print(report(res))
        if not args.no_docs:
            write_docs(res)
        return
    parts = set(args.only or ["throughput", "scaling", "idle", "latency"])
    GEN_BURST[0] = args.gen_burst
    setup(build=not os.environ.get("VRINGSWITCH_BIN"))
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    res = {"date": time.strftime("%Y-%m-%d"), "commit": commit, "machine": machine(),
           "secs": args.secs, "rounds": args.rounds, "gen_burst": args.gen_burst, "throughput": [], "summary": {}}
    measure = {"vringswitch": measure_vringswitch, "testpmd": throughput_testpmd,
               "ovs": throughput_ovs}
    with tempfile.TemporaryDirectory(prefix="vsbench.") as tmp:
        n = 0

        def work():
            nonlocal n
            n += 1
            d = Path(tmp) / str(n)
            d.mkdir()
            return d

        if "throughput" in parts:
            for r in range(1, args.rounds + 1):
                for size in args.sizes:
                    for sw in args.switches:
                        # An unbalanced loop lost a port's first burst (see `balanced`): it
                        # is kept in the report, left out of the medians, and measured again.
                        for _attempt in range(1 + args.retries):
                            mpps, cpp, burst, gen_cpp = measure[sw](work(), size, args.secs)
                            log(f"round {r} {size} B {sw}: {mpps} Mpps, {cpp:.0f} cycles/pkt")
                            m = {"round": r, "size": size, "switch": sw, "mpps_ports": mpps,
                                 "cpp": cpp, "burst": burst, "gen_cpp": gen_cpp}
                            res["throughput"].append(m)
                            if balanced(m):
                                break
            summarize(res)
        if "scaling" in parts:
            setups = (
                ("2 ports", 2, None),
                ("8 ports", 8, None),
                ("8 ports, VLANs 10 and 20", 8, [10] * 4 + [20] * 4),
                ("32 ports", 32, None),
            )
            res["scaling_runs"] = []
            for r in range(1, args.rounds + 1):
                for label, nports, vlans in setups:
                    s = scaling(work(), nports, args.secs, vlans)
                    s["label"], s["round"] = label, r
                    if not vlans and "testpmd" in args.switches:
                        s["testpmd"] = scaling_testpmd(work(), nports, args.secs)
                    log(f"scaling round {r} {label}: {s}")
                    res["scaling_runs"].append(s)
            res["scaling"] = [median_scaling([s for s in res["scaling_runs"] if s["label"] == label])
                              for label, _, _ in setups]
            res["flood"] = flooding(work(), 32, args.secs)
            log(f"flood: {res['flood']}")
        for kind in UPLINKS:
            if kind in parts:
                res[kind] = uplink_part(work, kind, args.sizes, args.secs, args.rounds,
                                        args.switches)
        if "tso" in parts:
            res["tso"] = tso_part(work, args.secs, args.rounds, args.switches)
        if "vxlan" in parts:
            res["vxlan"] = vxlan_part(work, [s for s in args.sizes if s in (64, 1518)] or [64, 1518],
                                      args.secs, args.rounds, args.switches)
        if "migration" in parts:
            res["migration"] = migration_part(work, args.rounds)
        if "dirtylog" in parts:
            res["dirtylog"] = dirty_log_part(work, args.secs, args.rounds)
        if "capture" in parts:
            res["capture"] = [capture_cost(work, size, args.secs, args.rounds)
                              for size in (64, 1518)]
        if "mirror" in parts:
            res["mirror"] = mirror_part(work, args.secs, args.rounds)
        if "upgrade" in parts:
            res["upgrade"] = upgrade_part(work, args.rounds)
        if "secgroups" in parts:
            res["secgroups"] = sg_part(work, args.secs, args.rounds, args.switches)
        if "policing" in parts:
            res["policing"] = [policing_cost(work, size, args.secs, args.rounds)
                               for size in (64, 1518)]
        if "idle" in parts:
            res["idle"] = {sw: idle_cpu(work(), sw) for sw in args.switches}
            log(f"idle: {res['idle']}")
        if "latency" in parts:
            res["latency_samples"] = 2000
            res["latency"] = {sw: latency(work(), sw, 2000, 1000) for sw in args.switches}
            log(f"latency: {res['latency']}")
            res["wakeup"] = latency(work(), "vringswitch", 30, 1_000_000)
            log(f"wake-up: {res['wakeup']}")
            res["wake_floor"] = json.loads(subprocess.run(
                ["taskset", "-c", str(GEN_CPU), PROBE, "floor", "--samples", "30",
                 "--interval-us", "1000000", "--core", str(SWITCH_CPU)],
                check=True, capture_output=True, text=True).stdout)
            log(f"wake-up floor: {res['wake_floor']}")
    res["tsc_hz"] = TSC_HZ[0]
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    print(report(res))
    if not args.no_docs:
        write_docs(res)
        log("wrote docs/benchmarks.md and docs/benchmarks.png")


if __name__ == "__main__":
    main()

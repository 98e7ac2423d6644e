#!/usr/bin/env python3
"""Counts the instructions vringswitch runs per forwarded frame: the one measure here that
the machine's noise does not move. The release binary runs under valgrind's callgrind, with
bench/run.py's testpmd generator offering frames of SIZE bytes for 40 s (every burst full, so
idle polls hardly count); the program's total is divided by the frames the worker forwarded.

    bench/callgrind.py 64 [BINARY]          # default: target/release/vringswitch
    bench/callgrind.py 64 [BINARY] --lines  # and where they go, by source line
    bench/callgrind.py 64 [BINARY] --asm    # and each instruction run at least every other
                                            # frame, with its count, in /tmp/vs-callgrind/asm.SIZE

VS_GROUPS=1 puts both ports in bench/run.py's security group of 50 rules and has the
generator send over 10,000 UDP flows (testpmd flowgen); VS_FLOWGEN=1 the same traffic
without groups: what the groups cost per frame, free of this host's noise (cache and TLB
misses are not counted, only instructions).
VS_LINES=N prints N source lines instead of 40 (all of them, with a large N, to compare
two builds file by file). VS_POLICE=1 polices both ports both ways at rates nothing reaches
(bench/run.py's POLICE_ALL): the policers' cost per frame. VS_BURST=N in the environment sets the worker's burst (default 32; 64 gave 641 against 639
at 32 with this generator, so per-burst work is no longer what costs).

Prints instructions per frame, in all and for the data path's main functions (inclusive).
With --lines, also the 40 source lines of the project that cost most per frame: each
instruction is charged to the innermost line of the project it was inlined from (a
`Vec::push` inlined into a line of worker.rs counts for that line), via addr2line.
Needs valgrind (apt-get install valgrind) and what bench/run.py sets up (hugepages,
dpdk-testpmd): run that once first. The profile stays in /tmp/vs-callgrind/out.SIZE for
callgrind_annotate.
"""
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as B  # noqa: E402

FUNCTIONS = ["Worker::run"]


def main():
    args = sys.argv[1:]
    by_asm = "--asm" in args
    by_line = "--lines" in args or by_asm
    args = [a for a in args if a not in ("--lines", "--asm")]
    if len(args) not in (1, 2):
        sys.exit(__doc__)
    size = int(args[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    binary = os.path.abspath(args[1]) if len(args) == 2 else f"{root}/target/release/vringswitch"
    for tool in ("valgrind", "callgrind_annotate"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            sys.exit(f"{tool} is missing: apt-get install valgrind")
    work = "/tmp/vs-callgrind"
    os.makedirs(work, exist_ok=True)
    socks = [f"{work}/p{i}.sock" for i in range(2)]
    for s in socks:
        if os.path.exists(s):
            os.unlink(s)
    lines = ["[dataplane]", f"cores = [{B.SWITCH_CPU}]", "[[bridges]]", 'name = "br0"']
    if os.environ.get("VS_BURST"):
        lines.insert(2, f"burst = {os.environ['VS_BURST']}")
    for i, s in enumerate(socks):
        lines += ["[[ports]]", f'name = "p{i}"', 'bridge = "br0"', 'type = "vhost-user"',
                  f'socket = "{s}"', 'mode = "server"']
        if os.environ.get("VS_POLICE"):
            lines += B.POLICE_ALL
        if os.environ.get("VS_GROUPS"):
            lines.append('security_groups = ["bench"]')
    if os.environ.get("VS_GROUPS"):
        lines += B.sg_group_lines()
    with open(f"{work}/vs.toml", "w") as f:
        f.write("\n".join(lines) + "\n")
    out = f"{work}/out.{size}"
    log = open(f"{work}/vs.log", "w")
    per_instr = ["--dump-instr=yes", "--compress-pos=no", "--compress-strings=no"]
    vs = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
                          + (per_instr if by_line else []) + [
                           binary, "--config", f"{work}/vs.toml",
                           "--api", f"127.0.0.1:{B.API_PORT}"],
                          stdout=log, stderr=subprocess.STDOUT)
    try:
        B.wait_for(lambda: all(os.path.exists(s) for s in socks), "the switch's sockets", 120)
        flows = B.flowgen(B.SG_FLOWS) if os.environ.get("VS_GROUPS") or os.environ.get(
            "VS_FLOWGEN") else {}
        gen, gen_out = B.generator(work, socks, size, 40, **flows)
        time.sleep(45)
        B.stop_generator(gen, gen_out)
        url = f"http://127.0.0.1:{B.API_PORT}/v1/stats"
        stats = json.loads(urllib.request.urlopen(url).read())
        frames = sum(w["packets"] for w in stats["workers"])
    finally:
        vs.send_signal(15)
        vs.wait(timeout=300)
    if frames == 0:
        sys.exit("no frame was forwarded: see /tmp/vs-callgrind/vs.log")
    # Run from elsewhere than the source tree: from inside it, callgrind_annotate names
    # files differently and lists code inlined into a function under the function's name.
    ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--auto=no", out],
                         capture_output=True, text=True, check=True, cwd="/").stdout
    total = None
    per = {}
    for line in ann.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(.*)", line)
        if not m:
            continue
        count, what = int(m.group(1).replace(",", "")), m.group(2)
        if "PROGRAM TOTALS" in what:
            total = count
        for fn in FUNCTIONS:
            # The function's own entry ("file:path::fn [binary]"), not code inlined into it.
            if fn not in per and re.search(rf"::{re.escape(fn)} \[", what):
                per[fn] = count
    print(f"{size} B: {frames} frames forwarded, {total / frames:.0f} instructions per frame")
    for fn in FUNCTIONS:
        if fn in per:
            print(f"  {fn}: {per[fn] / frames:.0f} per frame (inclusive)")
    if by_line:
        counts = instruction_counts(out, binary)
        print_lines(counts, binary, root, frames)
        if by_asm:
            write_asm(counts, binary, root, frames, f"{work}/asm.{size}")


def write_asm(counts, binary, root, frames, path):
    """The disassembly of the range the hot instructions lie in, each instruction run at
    least every other frame with its count per frame, and the project's source line above
    each run of them: where stack traffic and calls in the burst loop show up."""
    hot = sorted(a for a, c in counts.items() if c >= frames // 2)
    if not hot:
        return
    dis = subprocess.run(["objdump", "-d", "-l", "-C", "--no-show-raw-insn",
                          f"--start-address={hot[0]:#x}", f"--stop-address={hot[-1] + 16:#x}",
                          binary], capture_output=True, text=True, check=True).stdout
    lines, where, shown, total = [], None, None, 0.0
    for line in dis.splitlines():
        if line.startswith(root + "/") and re.match(r"\S+\.rs:\d+", line):
            where = line[len(root) + 1:].split(" ")[0]
            continue
        m = re.match(r"\s*([0-9a-f]+):\s+(.*)", line)
        if not m:
            continue
        per = counts.get(int(m.group(1), 16), 0) / frames
        if per < 0.5:
            continue
        total += per
        if where != shown:
            lines.append(f"    # {where}")
            shown = where
        lines.append(f"{per:5.2f}  {m.group(1)}  {m.group(2)}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"\n{total:.0f} instructions per frame listed in {path}")


def instruction_counts(out, binary):
    """Self cost per instruction address of `binary`, from a --dump-instr profile."""
    counts = {}
    fn_obj, skip_next = None, False
    with open(out) as f:
        for line in f:
            if line.startswith("ob="):
                fn_obj = line[3:].strip()
            elif line.startswith("calls="):
                skip_next = True  # the next cost line is the call's inclusive cost
            elif line.startswith("0x"):
                if skip_next:
                    skip_next = False
                    continue
                parts = line.split()
                if fn_obj == binary and len(parts) > 2:
                    a = int(parts[0], 16)
                    counts[a] = counts.get(a, 0) + int(parts[2])
    return counts


def print_lines(counts, binary, root, frames, top=int(os.environ.get("VS_LINES", "40"))):
    """The project's source lines that cost most per frame (self cost, inlining resolved)."""
    hot = [a for a, c in counts.items() if c >= frames // 100]
    resolved = subprocess.run(["addr2line", "-i", "-a", "-e", binary],
                              input="".join(f"{a:#x}\n" for a in hot),
                              capture_output=True, text=True, check=True).stdout
    per_line, addr = {}, None
    charged = set()
    for line in resolved.splitlines():
        if re.fullmatch(r"0x[0-9a-f]+", line):
            addr = int(line, 16)
            continue
        # Frames come innermost first: charge the first one in the project's sources.
        if addr in charged or not line.startswith(root + "/"):
            continue
        key = line[len(root) + 1:].split(" ")[0]
        per_line[key] = per_line.get(key, 0) + counts[addr]
        charged.add(addr)
    rest = sum(c for a, c in counts.items() if a not in charged)
    print(f"\nby source line (self, per frame; {rest / frames:.0f} of the binary elsewhere; libraries not counted):")
    for key, c in sorted(per_line.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {c / frames:6.1f}  {key}")


if __name__ == "__main__":
    main()

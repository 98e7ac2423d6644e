#!/usr/bin/env python3
"""A/B of vringswitch binaries with samples inside each run (the machine's cost band flips
within seconds, see docs/benchmarks.md): for each binary in turn, three times, one switch
process and one 30 s generator run sampled every 3 s. Prints each run's samples, then the
median and quartiles per binary.

    sudo bench/ab.py 64 /tmp/vs-old /tmp/vs-new
    GEN_BURST=128 bench/ab.py 64 ...     # more frames in flight: the switch saturated

Needs what bench/run.py sets up (hugepages, dpdk-testpmd): run that once first.
"""
import os
import statistics
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as B
work = "/tmp/abwork"; os.makedirs(work, exist_ok=True)
size = int(sys.argv[1]); bins = sys.argv[2:]
B.GEN_BURST[0] = int(os.environ.get("GEN_BURST", "32"))
res = {b: [] for b in bins}
for r in range(3):
    for b in bins:
        os.environ["VRINGSWITCH_BIN"] = b
        vs = B.Vringswitch(work, 2)
        try:
            p, out = B.generator(work, vs.socks, size, 30)
            time.sleep(2)
            c0, n0, _ = vs.cycles()
            for i in range(8):
                time.sleep(3)
                c1, n1, _ = vs.cycles()
                res[b].append(round((c1-c0)/(n1-n0)) if n1 > n0 else 0)
                c0, n0 = c1, n1
            mpps, _ = B.stop_generator(p, out)
        finally:
            vs.stop()
        print(r, os.path.basename(b), res[b][-8:], mpps, flush=True)
for b in bins:
    s = sorted(res[b])
    print(os.path.basename(b), "median", statistics.median(s), "p25", s[len(s)//4], "p75", s[3*len(s)//4], "min", s[0])

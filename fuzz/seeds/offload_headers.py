#!/usr/bin/env python3
"""Writes seeds for the offload_headers target into fuzz/corpus/offload_headers: well-formed
TSO frames (TCP over IPv4 and IPv6, tagged or not, 3,000 to 64,946 bytes of payload at
segment sizes 536, 600 and 1448) for every receiver (no offload, checksums only, all) and
every VLAN edit, each as the target reads its input: a 10-byte virtio-net header, the
offloads sent and taken, the edit, two cut points, then the frame. From scratch libFuzzer
seldom builds a TSO frame that passes the checks; from these it mutates real ones.

    fuzz/seeds/offload_headers.py
    cargo +nightly fuzz run -O offload_headers -- -max_len=70000
"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus", "offload_headers")


def fold(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def frame(payload_len, vlan, v6):
    """The frame and the offset of its L4 header."""
    eth = bytes([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]) + (b"\x81\x00\x00\x07" if vlan else b"")
    data = bytes((i * 13 + 5) & 0xFF for i in range(payload_len))
    tcp = struct.pack("!HHIIBBHHH", 1, 2, 1000, 1, 0x50, 0x18, 500, 0, 0)
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    if v6:
        ip = struct.pack("!IHBB16s16s", 0x60000000, 20 + payload_len, 6, 64, b"\xfd" * 16, b"\xfe" * 16)
        pseudo = fold(ip[8:40] + struct.pack("!IxxxB", 20 + payload_len, 6))
        ethertype = b"\x86\xdd"
    else:
        total = 40 + payload_len
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, min(total, 0xFFFF), 1, 0x4000, 64, 6, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", ~fold(ip) & 0xFFFF) + ip[12:]
        pseudo = fold(src + dst + struct.pack("!BBH", 0, 6, 20 + payload_len))
        ethertype = b"\x08\x00"
    # The checksum field as a sender that leaves it to its device writes it.
    tcp = tcp[:16] + struct.pack("!H", pseudo) + tcp[18:]
    l4 = len(eth) + 2 + len(ip)
    return eth + ethertype + ip + tcp + data, l4


def main():
    os.makedirs(OUT, exist_ok=True)
    n = 0
    for vlan in (False, True):
        for v6 in (False, True):
            for gso, payload in ((600, 3000), (536, 65000 - 54), (1448, 20000)):
                for taken in (0x0, 0x1, 0xF):
                    for edit in range(4):
                        f, l4 = frame(payload, vlan, v6)
                        gso_type = 4 if v6 else 1
                        hdr = struct.pack("<BBHHHH", 1, gso_type, l4 + 20, gso, l4, 16)
                        seed = hdr + bytes([0xF, taken, edit]) + struct.pack("<HH", 100, 4000) + f
                        with open(os.path.join(OUT, f"seed-{n}"), "wb") as out:
                            out.write(seed)
                        n += 1
    print(f"{n} seeds in {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()

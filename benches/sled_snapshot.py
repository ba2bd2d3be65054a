#!/usr/bin/env python3
"""Pages and fragments in a sled 0.34 snapshot: a diagnostic, run by hand.

    python3 benches/sled_snapshot.py DATA_DIR/db/snap.*

sled writes `snap.<lsn>` into the store's directory when it opens the store. Its page table
lists every page with the log positions of its base and of each fragment (an update appended
since the page was last written whole); a page read from disk costs one read per fragment, and
opening the store reads every entry. Prints the count of free pages, of present pages, and of
present pages by number of fragments. The layout read here (sled 0.34.7, serialization.rs):
an 8-byte stable lsn, a varint active segment, then per page either 0 (free: lsn, disk
pointer) or 1 + fragments (that many (lsn, disk pointer, size) triples); the file ends with a
12-byte length and CRC.
"""
import collections
import sys


def varint(b, i):
    x = b[i]
    if x <= 240:
        return x, i + 1
    if x <= 248:
        return 240 + 256 * (x - 241) + b[i + 1], i + 2
    if x == 249:
        return 2288 + 256 * b[i + 1] + b[i + 2], i + 3
    n = {250: 3, 251: 4, 252: 5, 253: 6, 254: 7, 255: 8}[x]
    return int.from_bytes(b[i + 1:i + 1 + n], "little"), i + 1 + n


def disk_ptr(b, i):
    blob = b[i] == 1
    _, i = varint(b, i + 1)
    if blob:
        _, i = varint(b, i)
    return i


def main(path):
    data = open(path, "rb").read()[:-12]
    _, i = varint(data, 8)
    free, present, frags = 0, 0, collections.Counter()
    while i < len(data):
        tag = data[i]
        i += 1
        if tag == 0:
            free += 1
            i = disk_ptr(data, i + 8)
            continue
        present += 1
        frags[tag - 1] += 1
        for _ in range(tag):
            i = disk_ptr(data, i + 8)
            _, i = varint(data, i)
    print(f"{path}: {free} free pages, {present} present, by fragments: {sorted(frags.items())}")


for p in sys.argv[1:]:
    main(p)

"""Time the frame decoder of the core at a git ref and of the working tree,
side by side.

    python tools/decoder_bench.py --old main

Two loads: bulk (4 MiB of 256 KiB data frames, fed a megabyte at a time, as
a channel's reads bring them) and a small answer (head, data, end and an
acknowledgement, fed in one piece). Each core runs in its own interpreter,
the two alternating for ``--rounds`` rounds; figures are the best of all
rounds: milliseconds a MiB, microseconds an answer.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from timer_bench import ROOT, export, run_probe

# Runs inside the child interpreter, with PYTHONPATH at one core's sources.
PROBE = r"""
import json, os, timeit
import bridgeproto as bp
from bridgeproto.wire import NEED_DATA, FrameDecoder, encode_frame

bulk = b"".join(encode_frame(bp.Data(1, os.urandom(256 << 10)), i + 1) for i in range(16))
bulk_pieces = [bulk[i : i + (1 << 20)] for i in range(0, len(bulk), 1 << 20)]
answer = b"".join((
    encode_frame(bp.ResponseHead(1, 200, b"OK", [(b"content-type", b"application/json")]), 1),
    encode_frame(bp.Data(1, b'{"hello":"world"}'), 2),
    encode_frame(bp.EndOfBody(1), 3),
    encode_frame(bp.Ack(5)),
))

def decode(pieces, times):
    decoder = FrameDecoder(1 << 20)
    for _ in range(times):
        for piece in pieces:
            decoder.receive_data(piece)
            while decoder.next_frame() is not NEED_DATA:
                pass

bulk_s = min(timeit.repeat(lambda: decode(bulk_pieces, 1), number=10, repeat=3)) / 10
small_s = min(timeit.repeat(lambda: decode([answer], 100), number=50, repeat=3)) / 50 / 100
print(json.dumps({"bulk": bulk_s / 4 * 1e3, "small": small_s * 1e6}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="main", help="git ref of the core to compare with")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        trees = {args.old: export(args.old, Path(scratch)), "tree": ROOT / "src"}
        rounds = [
            {name: run_probe(PROBE, src) for name, src in trees.items()} for _ in range(args.rounds)
        ]
    print(f"{'load':<22} {args.old:>12} {'tree':>10}")
    for load, unit in (("bulk", "ms a MiB"), ("small", "us an answer")):
        best = [min(r[name][load] for r in rounds) for name in trees]
        print(f"{load + ' (' + unit + ')':<22} {best[0]:>12.3f} {best[1]:>10.3f}")


if __name__ == "__main__":
    main()

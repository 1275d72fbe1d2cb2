"""Our dm-verity hash tree vs `veritysetup format` on the same file, in the same run.

    python benchmarks/verity.py [--size-mib 1024] [--rounds 3]

Both write a hash file with a superblock for the same data, salt and UUID; the root hashes must
agree. Reported: best-of-N wall time of each and the speed ratio (ours / veritysetup, > 1 means
we are faster). Both read the file from the page cache (it is written just before).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from ultraviolet.diskimage import HASH_WORKERS, map_file
from ultraviolet.formats.verity import format_hash_device
from ultraviolet.tools import tools

SALT = bytes(range(32))
VOLUME = uuid.UUID("a5b2c1d0-0000-4000-8000-000000000001")


def ours(data: Path, hashfile: Path) -> str:
    with map_file(data) as view:
        hash_device, root = format_hash_device(view, salt=SALT, uuid=VOLUME, workers=HASH_WORKERS)
    hashfile.write_bytes(hash_device)
    return root.hex()


def theirs(data: Path, hashfile: Path) -> str:
    argv = [
        "veritysetup",
        "format",
        str(data),
        str(hashfile),
        "--salt",
        SALT.hex(),
        "--uuid",
        str(VOLUME),
    ]
    output = tools().run(argv, binds=[data.parent]).text
    return next(line.split()[-1] for line in output.splitlines() if line.startswith("Root hash"))


def best(function: object, data: Path, hashfile: Path, rounds: int) -> tuple[float, str]:
    times, root = [], ""
    for _ in range(rounds):
        started = time.perf_counter()
        root = function(data, hashfile)  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return min(times), root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="uv-bench-", dir="/var/tmp") as work:
        data = Path(work) / "data"
        with data.open("wb") as handle:
            for _ in range(args.size_mib):
                handle.write(os.urandom(1 << 20))
        tools()  # create the chroot outside the timed region
        their_time, their_root = best(theirs, data, Path(work) / "theirs", args.rounds)
        our_time, our_root = best(ours, data, Path(work) / "ours", args.rounds)
        same_file = (Path(work) / "theirs").read_bytes() == (Path(work) / "ours").read_bytes()
    if our_root != their_root or not same_file:
        print(f"MISMATCH: ours {our_root} theirs {their_root} same file {same_file}")
        return 1
    size = args.size_mib
    print(f"verity format of {size} MiB, best of {args.rounds}, {HASH_WORKERS} hashing threads")
    print(f"  veritysetup format : {their_time:7.3f} s  {size / their_time:8.1f} MiB/s")
    print(f"  ultraviolet        : {our_time:7.3f} s  {size / our_time:8.1f} MiB/s")
    print(f"  speed ratio (ours/veritysetup): {their_time / our_time:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

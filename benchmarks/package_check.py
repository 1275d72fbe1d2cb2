"""The set-id check before mkosi: its cold and warm cost, and our .deb reading vs dpkg-deb.

    python benchmarks/package_check.py

For the example policy's package set (what mkosi installs): the check with fresh apt state and
no per-.deb records (cold: apt-get update, resolution, the charged .debs read; .debs missing from
mkosi's package cache are downloaded, which mkosi would otherwise do), then again (warm). Side by
side in the same run: reading every .deb with formats.deb vs `dpkg-deb --contents` on the same
files in the tools chroot (ratio > 1 means we are faster). Both decompress every data.tar.
"""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ultraviolet.build.node import example_policy_path
from ultraviolet.build.packages import PackageCheck
from ultraviolet.build.render import render_tree
from ultraviolet.formats.deb import read_deb
from ultraviolet.policy.load import load_policy
from ultraviolet.tools import tools


def timed_check(check: PackageCheck, entries: tuple[str, ...]) -> float:
    started = time.perf_counter()
    check.package_set(entries)
    return time.perf_counter() - started


def main() -> int:
    policy = load_policy(example_policy_path())
    chroot = tools()
    with tempfile.TemporaryDirectory(prefix="uv-bench-", dir="/var/tmp") as work:
        tree = render_tree(policy, Path(work) / "tree").directory
        check = PackageCheck(tree, chroot=chroot)
        check.state = Path(work) / "state"  # cold: apt lists, resolution, per-.deb records
        cold = timed_check(check, policy.image.packages)
        warm = timed_check(check, policy.image.packages)
        files = check.resolve()
    debs = [check.archives / name for name in files]
    size = sum(deb.stat().st_size for deb in debs) >> 20
    started = time.perf_counter()
    workers = min(4, os.cpu_count() or 1)  # as PackageCheck.package_set
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda deb: read_deb(deb.read_bytes()), debs))
    ours = time.perf_counter() - started
    loop = 'for deb in "$@"; do dpkg-deb --contents "$deb" >/dev/null || exit 1; done'
    started = time.perf_counter()
    chroot.run(["sh", "-c", loop, "sh", *map(str, debs)], binds=[check.archives])
    theirs = time.perf_counter() - started
    print(f"set-id check of the example policy: {len(files)} packages, {size} MiB of .debs")
    print(f"  cold (apt state, resolution, charged .debs read): {cold:6.2f} s")
    print(f"  warm (apt-get update, cached resolution and records): {warm:6.2f} s")
    print(f"  read every .deb: dpkg-deb --contents one by one {theirs:6.2f} s,")
    print(f"                   formats.deb on {workers} threads {ours:6.2f} s")
    print(f"  speed ratio (ours/dpkg-deb): {theirs / ours:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`uvctl build` against plain mkosi on the same rendered tree, in the same run.

    python benchmarks/build.py [--policy NODE.toml] [--rounds N] [--cold-rounds N]

1. plain mkosi: `mkosi build` on the tree our renderer wrote for the policy, signed with the
   same db key (the baseline: what a user of mkosi alone would run);
2. ours, full: build_node into an empty output directory (mkosi + /usr checks + UKI
   finalization + release + reference values); overhead = ours / plain - 1 (target <= 5 %);
3. ours, policy-only: the same output directory after changing only the command line and the
   IPE mode (mkosi's build is reused; target <= 15 s).
Cold pairs first (each build with an empty package cache: every package downloaded, our
package check's apt state empty too), then warm pairs (the shared package cache, as a
developer's second build sees it), then the policy-only rebuild.
Every stage of ours is timed from its progress lines. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import ClassVar

from ultraviolet.build.keyset import init_keys, load_keys
from ultraviolet.build.mkosi import run_mkosi
from ultraviolet.build.node import build_node, example_policy_path
from ultraviolet.build.render import render_tree
from ultraviolet.policy import load_policy, parse_policy
from ultraviolet.policy.model import NodePolicy
from ultraviolet.tools import tools


class StageClock:
    """Collects (stage, seconds) from build_node's progress lines (mkosi's own lines ignored)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.current = "start"
        self.stages: list[tuple[str, float]] = []

    STAGES: ClassVar[dict[str, str]] = {
        "rendering": "render tree",
        "resolving the packages": "package set-id check",
        "running mkosi": "mkosi",
        "checking /usr": "/usr checks",
        "release:": "copy release",
        "UKI:": "finalize UKI",
        "manifest": "manifest+reference",
    }

    def __call__(self, line: str) -> None:
        for prefix, stage in self.STAGES.items():
            if line.startswith(prefix):
                self.lap(stage)

    def lap(self, next_stage: str) -> None:
        now = time.perf_counter()
        self.stages.append((self.current, now - self.started))
        self.current, self.started = next_stage, now


def settle() -> None:
    """Write back and drop the page cache, so that no build pays for the previous one's
    gigabytes still going to disk (root only; without it the numbers are noisier)."""
    os.sync()
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(action: Callable[[], object]) -> float:
    settle()
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def policy_only_variant(policy: NodePolicy) -> NodePolicy:
    text = Path(policy.source).read_text()
    changed = text.replace('cmdline = ["quiet"]', 'cmdline = ["quiet", "loglevel=4"]')
    changed = changed.replace('ipe_mode = "enforce"', 'ipe_mode = "audit"')
    if changed == text:
        raise SystemExit("the policy has no cmdline/ipe_mode line to vary")
    return parse_policy(changed, source=policy.source)


@dataclass
class Series:
    """Plain and our builds of one kind (warm or cold), with our stage clocks."""

    kind: str
    cold: bool
    plain_times: list[float] = field(default_factory=list)
    our_times: list[float] = field(default_factory=list)
    clocks: list[StageClock] = field(default_factory=list)


def cache_for(work: Path, name: str, cold: bool) -> None:
    # A cold build gets an empty package cache (mkosi's .debs and our package check's apt
    # state both live there); a warm one the shared cache.
    # The previous cold build's cache goes first: half a GB each, on a disk that also holds
    # both builds' outputs.
    for previous in work.glob("packages-*"):
        shutil.rmtree(previous, ignore_errors=True)
    if cold:
        os.environ["ULTRAVIOLET_PACKAGE_CACHE"] = str(work / f"packages-{name}")
    else:
        os.environ.pop("ULTRAVIOLET_PACKAGE_CACHE", None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, default=example_policy_path())
    parser.add_argument("--rounds", type=int, default=2, help="warm pairs; best of N")
    parser.add_argument("--cold-rounds", type=int, default=1, help="cold pairs (0: none)")
    args = parser.parse_args()
    policy = load_policy(args.policy)
    tools()  # the chroot exists before anything is timed
    warm = Series("warm (shared package cache)", cold=False)
    cold = Series("cold (empty package caches: every package downloaded)", cold=True)
    with tempfile.TemporaryDirectory(prefix="uv-bench-build-", dir="/var/tmp") as temporary:
        work = Path(temporary)
        init_keys(work / "keys")
        keys = load_keys(work / "keys")
        key, certificate = (Path(p) for p in keys.signer("db").tool_arguments())
        tree = render_tree(policy, work / "plain-tree").directory

        def plain(series: Series) -> None:
            shutil.rmtree(work / "plain", ignore_errors=True)
            cache_for(work, f"plain-{len(series.plain_times)}", series.cold)
            build = partial(run_mkosi, tree, work / "plain", key, certificate)
            series.plain_times.append(timed(build))

        def ours(series: Series) -> None:
            shutil.rmtree(work / "ours", ignore_errors=True)
            cache_for(work, f"ours-{len(series.our_times)}", series.cold)
            clock = StageClock()
            build = partial(build_node, policy, work / "ours", keys, progress=clock)
            series.our_times.append(timed(build))
            clock.lap("end")
            series.clocks.append(clock)

        for series, rounds in ((cold, args.cold_rounds), (warm, args.rounds)):
            for round_number in range(rounds):
                # Alternate who goes first: the second build of a pair meets a page cache and
                # a disk still writing back the first one's gigabytes.
                pair = (plain, ours) if round_number % 2 == 0 else (ours, plain)
                for build in pair:
                    build(series)
        cache_for(work, "", cold=False)
        variant = policy_only_variant(policy)
        again = StageClock()
        policy_only = timed(lambda: build_node(variant, work / "ours", keys, progress=again))
        again.lap("end")
    print(f"build of {args.policy.name} (alternating order within each pair)")
    for series in (warm, cold):
        if series.plain_times:
            report(series)
    print(f"  policy-only rebuild    : {policy_only:7.1f} s   (mkosi reused)")
    for stage, seconds in again.stages[1:]:
        print(f"      {stage:<22} {seconds:7.1f} s")
    return 0


def report(series: Series) -> None:
    plain, ours = min(series.plain_times), min(series.our_times)
    best = series.clocks[series.our_times.index(ours)]
    print(f" {series.kind}, best of {len(series.plain_times)}")
    print(f"  plain mkosi            : {plain:7.1f} s   runs {_runs(series.plain_times)}")
    print(f"  uvctl build            : {ours:7.1f} s   runs {_runs(series.our_times)}")
    print(f"      overhead           : {100 * (ours / plain - 1):+.1f} %")
    for stage, seconds in best.stages[1:]:
        print(f"      {stage:<22} {seconds:7.1f} s")
    mkosi_stages = [dict(clock.stages).get("mkosi", 0.0) for clock in series.clocks]
    print(f"      mkosi stage runs   : {_runs(mkosi_stages)} s")
    if len(series.plain_times) > 1:
        spread = max(series.plain_times) / min(series.plain_times) - 1
        print(f"      noise              : plain mkosi runs differ by {100 * spread:.0f} %")
    without = ours - dict(best.stages).get("mkosi", 0.0)
    print(f"  ours without mkosi     : {without:7.1f} s   ({100 * without / plain:.1f} % of plain)")


def _runs(times: list[float]) -> str:
    return ", ".join(f"{t:.1f}" for t in times)


if __name__ == "__main__":
    sys.exit(main())

"""The cache of node builds: bounded, and shared by releases signed with the build's own keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ultraviolet.build.keyset import init_keys
from ultraviolet.build.mkosi import forget_builds_of_tree
from ultraviolet.build.node import (
    KEPT_BUILDS,
    PIPELINE_VERSION,
    USED_STAMP,
    cached_build_location,
    example_policy_path,
    prune_cached_builds,
)
from ultraviolet.policy import load_policy


def _build(builds: Path, name: str, used: float | None) -> Path:
    directory = builds / name
    (directory / "mkosi").mkdir(parents=True)
    (directory / "mkosi" / "image.raw").write_bytes(b"\0" * 16)
    if used is not None:
        (directory / USED_STAMP).touch()
        os.utime(directory / USED_STAMP, (used, used))
    return directory


def test_pruning_keeps_the_most_recently_used_builds_and_drops_other_pipelines(
    tmp_path: Path,
) -> None:
    current = f"-p{PIPELINE_VERSION}"
    used = [
        _build(tmp_path, f"host-{n:02d}{current}", 1_000_000 + n) for n in range(KEPT_BUILDS + 2)
    ]
    other_pipeline = _build(tmp_path, f"host-99-p{PIPELINE_VERSION - 1}", 2_000_000)
    new = tmp_path / f"host-new{current}"
    prune_cached_builds(tmp_path, keep=new)
    survivors = sorted(p.name for p in tmp_path.iterdir())
    # The new build is one of the KEPT_BUILDS: the most recent others fill the rest, even a
    # build of another pipeline used more recently than them is gone.
    assert survivors == sorted(b.name for b in used[-(KEPT_BUILDS - 1) :])
    assert not other_pipeline.exists()


def test_a_build_without_a_use_stamp_counts_as_used_when_its_directory_changed(
    tmp_path: Path,
) -> None:
    current = f"-p{PIPELINE_VERSION}"
    stamped = [_build(tmp_path, f"host-{n}{current}", 2_000_000 + n) for n in range(KEPT_BUILDS)]
    unstamped = _build(tmp_path, f"host-old{current}", None)
    os.utime(unstamped, (1_000_000, 1_000_000))
    prune_cached_builds(tmp_path, keep=tmp_path / f"host-new{current}")
    assert not unstamped.exists()
    assert not stamped[0].exists()
    assert all(b.exists() for b in stamped[1:])


def test_pruning_an_absent_cache_is_no_error(tmp_path: Path) -> None:
    prune_cached_builds(tmp_path / "absent", keep=tmp_path / "absent" / "new")


def test_the_next_release_signed_by_the_builds_own_keys_shares_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ULTRAVIOLET_CACHE", str(tmp_path))
    policy = load_policy(example_policy_path())
    own = cached_build_location(policy)
    init_keys(own.keys)
    assert cached_build_location(policy, keys=own.keys).output == own.output
    init_keys(tmp_path / "other-keys")
    other = cached_build_location(policy, keys=tmp_path / "other-keys")
    assert other.output != own.output
    assert other.output.name.startswith(own.output.name.removesuffix(f"-p{PIPELINE_VERSION}"))
    assert other.keys == tmp_path / "other-keys"


def test_a_trees_new_content_forgets_its_earlier_builds_but_not_other_trees(
    tmp_path: Path,
) -> None:
    for name in ("minimal-" + "a" * 16, "minimal-" + "b" * 16, "minimal-x-" + "c" * 16):
        (tmp_path / name / "keys").mkdir(parents=True)
    (tmp_path / "minimal-notes").mkdir()
    forget_builds_of_tree(tmp_path, "minimal")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minimal-notes", "minimal-x-" + "c" * 16]

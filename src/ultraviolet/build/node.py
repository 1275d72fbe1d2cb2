"""Building a node image from a node policy: render, sign the IPE policy, run mkosi, release.

OUT/tree/       the rendered mkosi tree (inspectable, reproducible from the policy)
OUT/mkosi/      mkosi's outputs
OUT/release/    what is published (see release.py)
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ultraviolet.build.initrd import initrd_extension
from ultraviolet.build.keyset import KeySet, init_keys, load_keys
from ultraviolet.build.mkosi import MkosiOutputs, run_mkosi_reusing, tree_digest
from ultraviolet.build.packages import check_package_set_ids
from ultraviolet.build.release import (
    SPLIT_SUFFIXES,
    FileDigests,
    collect_release,
    reference_values,
    write_manifest,
    write_reference,
)
from ultraviolet.build.render import render_tree
from ultraviolet.build.rootsig import PROFILE_OPTIONS, finalize_uki
from ultraviolet.build.truths import check_usr_partition
from ultraviolet.errors import BuildError
from ultraviolet.formats.ipe import sign_ipe
from ultraviolet.policy.model import NodePolicy
from ultraviolet.tools import cache_dir, tools

Progress = Callable[[str], None]
PUBRING = "usr/lib/systemd/import-pubring.gpg"
# Part of the cache key of cached builds: bump when the build pipeline changes its output.
PIPELINE_VERSION = 16
# How many node builds (about 1.6 GB each) the cache keeps, the most recently used: a test run
# uses four mkosi trees (the example, its 1.0.1, a 1.0.1 whose health check fails, and the
# example with a verifier URL), and one more spares a developer's own policy a rebuild.
KEPT_BUILDS = 5
USED_STAMP = ".used"


@dataclass(frozen=True)
class BuildResult:
    release: Path
    image: Path
    uki: Path
    reference: Path


def build_node(
    policy: NodePolicy,
    output: Path,
    keys: KeySet,
    *,
    release: Path | None = None,
    progress: Progress | None = None,
) -> BuildResult:
    """Build (or rebuild) the node image of `policy` into `output` (the release into
    `release`, default OUT/release). mkosi runs only when what shapes /usr changed; the UKI
    (command line, IPE policy, profiles, signatures) and the release are made every time."""
    say = progress or (lambda line: None)
    say(f"rendering the mkosi tree for {policy.image.name} {policy.image.version}")
    rendered = render_tree(policy, output / "tree")
    if policy.update.source:
        # The key systemd-sysupdate (systemd-pull) checks SHA256SUMS.gpg against.
        pubring = rendered.directory / "mkosi.extra" / PUBRING
        pubring.parent.mkdir(parents=True, exist_ok=True)
        pubring.write_bytes(keys.signer("update").openpgp_public_key())
    ipe_signed = None
    if rendered.ipe_policy:
        signer = keys.signer("ipe")
        ipe_signed = sign_ipe(rendered.ipe_policy, signer.pair.key, signer.pair.certificate)
    outputs = _mkosi_stage(policy, rendered.directory, output, keys, say)
    with FileDigests(outputs.directory / ".sha256sums") as digests:
        return _release_stage(
            policy,
            outputs,
            keys,
            release or output / "release",
            digests,
            say,
            uki_additions=(initrd_extension(policy, ipe_signed), rendered.cmdline),
            ipe_signed=ipe_signed,
        )


def _release_stage(
    policy: NodePolicy,
    outputs: MkosiOutputs,
    keys: KeySet,
    release: Path,
    digests: FileDigests,
    say: Progress,
    *,
    uki_additions: tuple[bytes, Sequence[str]],
    ipe_signed: bytes | None,
) -> BuildResult:
    """The release from mkosi's outputs: image, split partitions, finalized UKI, SHA256SUMS
    and reference values; files are hashed in the background as soon as they are final."""
    stem = f"{policy.image.name}_{policy.image.version}"
    splits = [outputs.directory / (stem + suffix) for suffix in SPLIT_SUFFIXES]
    for split in splits:
        digests.start(split)
    say("release: image, split usr partitions")
    files = collect_release(outputs, stem, release)
    image = release / outputs.image.name
    uki = release / f"{stem}.efi"
    say("UKI: command line, root-hash signature, IPE policy, profiles, Secure Boot signature")
    initrd_extra, cmdline_extra = uki_additions
    finalize_uki(
        image,
        uki,
        name=uki.name,
        profiles=[PROFILE_OPTIONS[p] for p in policy.boot.profiles if p != "main"],
        initrd_extra=initrd_extra,
        cmdline_extra=cmdline_extra,
        verity=keys.signer("verity"),
        secure_boot=keys.signer("db"),
        chroot=tools(),
    )
    say("manifest (SHA256SUMS, signed) and reference values")
    for path in (image, uki):
        digests.start(path)  # hashed while the reference values are computed
    reference = write_reference(release, reference_values(policy, image, uki, keys, ipe_signed))
    write_manifest(release, [*files, uki], keys, digests)
    digests.remember(splits)
    say(f"release written to {release}")
    return BuildResult(release, image, uki, reference)


def _mkosi_stage(
    policy: NodePolicy, tree: Path, output: Path, keys: KeySet, say: Progress
) -> MkosiOutputs:
    key_path, certificate_path = keys.signer("db").tool_arguments()
    stem = f"{policy.image.name}_{policy.image.version}"

    def check_truths(outputs: MkosiOutputs) -> None:
        say("checking /usr: no set-id bits, file capabilities or device nodes")
        allowed = (*policy.integrity.suid_allow, *policy.integrity.capabilities_allow)
        check_usr_partition(outputs.directory / f"{stem}.usr.raw", allowed)

    def check_packages() -> None:
        # Only when mkosi runs: a reused /usr was built from the same package list and
        # allow-list (both are part of the tree), so its verdict stands.
        say("resolving the packages mkosi will install: set-id files need integrity.suid_allow")
        check_package_set_ids(policy, tree)
        say("running mkosi (packages, /usr, verity, UKI)")

    outputs, reused = run_mkosi_reusing(
        tree,
        output / "mkosi",
        Path(key_path),
        Path(certificate_path),
        check=check_truths,
        before=check_packages,
        progress=say,
    )
    if reused:
        say(f"reused the mkosi build in {outputs.directory}: /usr unchanged")
    if outputs.uki is None:
        raise BuildError(f"mkosi produced no UKI in {outputs.directory}")
    return outputs


def example_policy_path(name: str = "container-host") -> Path:
    """An example node policy shipped in the package (examples/ in the repository links here)."""
    path = Path(str(resources.files("ultraviolet") / "examples" / f"{name}.toml"))
    if not path.is_file():
        raise BuildError(f"example policy {name!r} is missing from the installation")
    return path


@dataclass(frozen=True)
class CachedBuild:
    """Where build_cached_node keeps a policy's build: `output` is the mkosi build shared by
    every policy with the same mkosi tree and keys, `release` this policy's release in it, and
    `marker` exists once that release is complete."""

    output: Path
    release: Path
    marker: Path
    keys: Path


def cached_build_location(policy: NodePolicy, keys: Path | None = None) -> CachedBuild:
    with tempfile.TemporaryDirectory(prefix="uv-render-") as probe:
        digest = tree_digest(render_tree(policy, Path(probe) / "tree").directory)[:16]
    name = f"{policy.image.name}-{digest}"
    builds = cache_dir() / "node-builds"
    if keys is not None and not _same_keys(keys, builds / f"{name}-p{PIPELINE_VERSION}" / "keys"):
        name += "-k" + _db_fingerprint(keys)
    output = builds / f"{name}-p{PIPELINE_VERSION}"
    return CachedBuild(
        output,
        output / f"release-{policy.digest[:16]}",
        output / f".complete-{policy.digest[:16]}",
        keys or output / "keys",
    )


def _db_fingerprint(keys: Path) -> str:
    return hashlib.sha256(load_keys(keys).certificate_pem("db")).hexdigest()[:8]


def _same_keys(keys: Path, generated: Path) -> bool:
    # The next release of a policy whose mkosi tree did not change is signed by the keys
    # generated for that tree's own build: it shares the build rather than a copy of it
    # under a keyed name (1.6 GB and a whole mkosi run).
    return generated.is_dir() and _db_fingerprint(keys) == _db_fingerprint(generated)


def prune_cached_builds(builds: Path, keep: Path) -> None:
    """Make room for the build `keep`: remove the builds of other pipeline versions (never
    used again) and all but the KEPT_BUILDS - 1 most recently used others. A cache kept across
    changes (CI keeps one) would otherwise grow by gigabytes with every change of the rendered
    tree or of the pipeline."""
    others = [b for b in builds.iterdir() if b.is_dir() and b != keep] if builds.is_dir() else []
    current = f"-p{PIPELINE_VERSION}"
    stale = [b for b in others if not b.name.endswith(current)]
    kept = sorted((b for b in others if b.name.endswith(current)), key=_last_used, reverse=True)
    for build in stale + kept[KEPT_BUILDS - 1 :]:
        shutil.rmtree(build, ignore_errors=True)


def _last_used(build: Path) -> float:
    stamp = build / USED_STAMP
    try:
        return (stamp if stamp.exists() else build).stat().st_mtime
    except FileNotFoundError:  # removed meanwhile by another process's pruning
        return 0.0


def build_cached_node(
    policy: NodePolicy,
    *,
    rebuild: bool = False,
    keys: Path | None = None,
    progress: Progress | None = None,
) -> tuple[BuildResult, KeySet]:
    """Build into the cache directory, one directory per mkosi tree (and key set), so that
    policies differing only in what the UKI carries share the mkosi build, with one release
    per node policy. Keys are generated there unless `keys` names a key set (the next version
    of a release must be signed by the same keys). The demo and the build tests share it; it
    keeps the KEPT_BUILDS most recently used builds."""
    where = cached_build_location(policy, keys)
    if rebuild:
        shutil.rmtree(where.output, ignore_errors=True)
    prune_cached_builds(where.output.parent, keep=where.output)
    where.output.mkdir(parents=True, exist_ok=True)
    (where.output / USED_STAMP).touch()
    if not where.keys.exists():
        init_keys(where.keys)
    key_set = load_keys(where.keys)
    if not where.marker.exists():
        result = build_node(policy, where.output, key_set, release=where.release, progress=progress)
        where.marker.write_text("ok\n")
        return result, key_set
    stem = f"{policy.image.name}_{policy.image.version}"
    release = where.release
    result = BuildResult(
        release, release / f"{stem}.raw", release / f"{stem}.efi", release / "reference.json"
    )
    return result, key_set

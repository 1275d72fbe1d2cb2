"""Building a node image from a node policy: render, sign the IPE policy, run mkosi, release.

OUT/tree/       the rendered mkosi tree (inspectable, reproducible from the policy)
OUT/mkosi/      mkosi's outputs
OUT/release/    what is published (see release.py)
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ultraviolet.build.initrd import initrd_extension
from ultraviolet.build.keyset import KeySet, init_keys, load_keys
from ultraviolet.build.mkosi import run_mkosi, tree_digest
from ultraviolet.build.release import (
    collect_release,
    reference_values,
    write_manifest,
    write_reference,
)
from ultraviolet.build.render import IPE_DIRECTORY, render_tree
from ultraviolet.build.rootsig import PROFILE_OPTIONS, finalize_uki
from ultraviolet.build.truths import check_usr
from ultraviolet.errors import BuildError
from ultraviolet.formats.ipe import sign_ipe
from ultraviolet.policy.model import NodePolicy
from ultraviolet.tools import cache_dir, tools

Progress = Callable[[str], None]
# Part of the cache key of cached builds: bump when the build pipeline changes its output.
PIPELINE_VERSION = 8


@dataclass(frozen=True)
class BuildResult:
    release: Path
    image: Path
    uki: Path
    reference: Path


def _sign_ipe(text: str, keys: KeySet, extra: Path) -> bytes:
    signer = keys.signer("ipe")
    signed = sign_ipe(text, signer.pair.key, signer.pair.certificate)
    (extra / IPE_DIRECTORY / "policy.p7s").write_bytes(signed)
    return signed


def _check_truths(policy: NodePolicy, usr_partition: Path, output: Path) -> None:
    extracted = output / ".usr-extracted"
    shutil.rmtree(extracted, ignore_errors=True)
    tools().run(
        ["fsck.erofs", f"--extract={extracted}", str(usr_partition)],
        binds=[output, usr_partition.parent],
    )
    try:
        allowed = (*policy.integrity.suid_allow, *policy.integrity.capabilities_allow)
        check_usr(extracted, "/usr", allowed)
    finally:
        shutil.rmtree(extracted, ignore_errors=True)


def build_node(
    policy: NodePolicy, output: Path, keys: KeySet, *, progress: Progress | None = None
) -> BuildResult:
    say = progress or (lambda line: None)
    say(f"rendering the mkosi tree for {policy.image.name} {policy.image.version}")
    rendered = render_tree(policy, output / "tree")
    ipe_signed = None
    if rendered.ipe_policy:
        ipe_signed = _sign_ipe(rendered.ipe_policy, keys, rendered.directory / "mkosi.extra")
    say("running mkosi (packages, /usr, verity, UKI, signatures)")
    key_path, certificate_path = keys.signer("db").tool_arguments()
    outputs = run_mkosi(
        rendered.directory,
        output / "mkosi",
        Path(key_path),
        Path(certificate_path),
        progress=progress,
    )
    if outputs.uki is None:
        raise BuildError(f"mkosi produced no UKI in {outputs.directory}")
    stem = f"{policy.image.name}_{policy.image.version}"
    say("checking /usr: no set-id bits, file capabilities or device nodes")
    _check_truths(policy, outputs.directory / f"{stem}.usr.raw", output)
    say("UKI: root-hash signature on the command line, profiles, Secure Boot signature")
    finalize_uki(
        outputs.image,
        outputs.uki,
        name=f"{stem}.efi",
        profiles=[PROFILE_OPTIONS[p] for p in policy.boot.profiles if p != "main"],
        initrd_extra=initrd_extension(policy, ipe_signed),
        verity=keys.signer("verity"),
        secure_boot=keys.signer("db"),
        chroot=tools(),
    )
    release = output / "release"
    files = collect_release(outputs, stem, release)
    write_manifest(release, files, keys)
    image = release / outputs.image.name
    uki = release / outputs.uki.name
    reference = write_reference(release, reference_values(policy, image, uki, keys, ipe_signed))
    say(f"release written to {release}")
    return BuildResult(release, image, uki, reference)


def example_policy_path(name: str = "container-host") -> Path:
    """An example node policy shipped in the package (examples/ in the repository links here)."""
    path = Path(str(resources.files("ultraviolet") / "examples" / f"{name}.toml"))
    if not path.is_file():
        raise BuildError(f"example policy {name!r} is missing from the installation")
    return path


def build_cached_node(
    policy: NodePolicy, *, rebuild: bool = False, progress: Progress | None = None
) -> tuple[BuildResult, KeySet]:
    """Build once per rendered-tree content into the cache directory (keys generated there);
    the demo and the build tests share it."""
    with tempfile.TemporaryDirectory(prefix="uv-render-") as probe:
        digest = tree_digest(render_tree(policy, Path(probe) / "tree").directory)[:16]
    output = cache_dir() / "node-builds" / f"{policy.image.name}-{digest}-p{PIPELINE_VERSION}"
    done = output / ".complete"
    if rebuild or not done.exists():
        shutil.rmtree(output, ignore_errors=True)
        init_keys(output / "keys")
        build_node(policy, output, load_keys(output / "keys"), progress=progress)
        done.write_text("ok\n")
    stem = f"{policy.image.name}_{policy.image.version}"
    release = output / "release"
    result = BuildResult(
        release, release / f"{stem}.raw", release / f"{stem}.efi", release / "reference.json"
    )
    return result, load_keys(output / "keys")

"""Running mkosi (from the tools chroot) on a rendered tree, with progress and cached outputs."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ultraviolet.build.keys import generate_signing_key, load_key_pair, write_key_pair
from ultraviolet.errors import BuildError
from ultraviolet.tools import ToolsChroot, cache_dir, tools

Progress = Callable[[str], None]

DEFAULT_TREE = "minimal"
BUILD_TIMEOUT_S = 3600
SPLIT_NAMES = (
    "esp",
    "usr",
    "usr-verity",
    "usr-verity-sig",
    "root",
    "root-verity",
    "root-verity-sig",
)


@dataclass(frozen=True)
class MkosiOutputs:
    """What one mkosi build produced, all in `directory`."""

    directory: Path
    image: Path
    uki: Path | None
    key: Path
    certificate: Path


def package_cache_dir() -> Path:
    """Where mkosi keeps downloaded packages between builds; ULTRAVIOLET_PACKAGE_CACHE moves it
    (an empty directory gives a cold build, as the build benchmark measures)."""
    override = os.environ.get("ULTRAVIOLET_PACKAGE_CACHE")
    return Path(override) if override else cache_dir() / "mkosi-packages"


def embedded_tree(name: str = DEFAULT_TREE) -> Path:
    """The path of an mkosi tree shipped inside the package (the embedded default image)."""
    root = resources.files("ultraviolet.build") / "trees" / name
    path = Path(str(root))
    if not (path / "mkosi.conf").is_file():
        raise BuildError(f"embedded mkosi tree {name!r} is missing from the installation")
    return path


def tree_digest(tree: Path) -> str:
    """A digest of every file (path and content) of a tree: the cache key of its build."""
    digest = hashlib.sha256()
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(tree)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _find_outputs(directory: Path, key: Path, certificate: Path) -> MkosiOutputs:
    whole = sorted(
        p for p in directory.glob("*.raw") if not p.is_symlink() and not _is_split_partition(p)
    )
    if len(whole) != 1:
        raise BuildError(f"expected one disk image in {directory}, found {[p.name for p in whole]}")
    ukis = sorted(directory.glob("*.efi"))
    return MkosiOutputs(directory, whole[0], ukis[0] if ukis else None, key, certificate)


def _is_split_partition(path: Path) -> bool:
    # mkosi names split partitions <image>.<SplitName>.raw; the whole image is <image>.raw.
    stem = path.name.removesuffix(".raw")
    return any(stem.endswith("." + suffix) for suffix in SPLIT_NAMES)


def run_mkosi(
    tree: Path,
    output_dir: Path,
    key_path: Path,
    certificate_path: Path,
    *,
    chroot: ToolsChroot | None = None,
    progress: Progress | None = None,
) -> MkosiOutputs:
    """Build `tree` with mkosi into `output_dir`, signing with the key (Secure Boot + verity)."""
    chroot = chroot or tools()
    output_dir.mkdir(parents=True, exist_ok=True)
    workspace = output_dir / ".workspace"
    workspace.mkdir(exist_ok=True)
    package_cache = package_cache_dir()
    package_cache.mkdir(parents=True, exist_ok=True)
    argv = [
        "mkosi",
        "--force",
        "--directory",
        str(tree),
        f"--output-directory={output_dir}",
        f"--workspace-directory={workspace}",
        f"--package-cache-dir={package_cache}",
        f"--secure-boot-key={key_path}",
        f"--secure-boot-certificate={certificate_path}",
        f"--verity-key={key_path}",
        f"--verity-certificate={certificate_path}",
        "build",
    ]
    chroot.run(
        argv,
        binds=[tree, output_dir, package_cache, key_path.parent],
        cwd=tree,
        stream=progress,
        timeout=BUILD_TIMEOUT_S,
    )
    shutil.rmtree(workspace, ignore_errors=True)
    return _find_outputs(output_dir, key_path, certificate_path)


def run_mkosi_reusing(
    tree: Path,
    output_dir: Path,
    key_path: Path,
    certificate_path: Path,
    *,
    check: Callable[[MkosiOutputs], None] = lambda outputs: None,
    before: Callable[[], None] = lambda: None,
    progress: Progress | None = None,
) -> tuple[MkosiOutputs, bool]:
    """Run mkosi unless `output_dir` already holds its build of the same tree signed with the
    same key; the second value says whether the earlier build was reused. Everything that only
    touches the UKI (command line, IPE policy, profiles) stays out of the tree, so changing it
    reuses /usr: no package download, no erofs or verity rebuild. `before` runs only when
    mkosi is about to; a fresh build is recorded as reusable only once `check` accepted it."""
    stamp = output_dir / ".built-from"
    certificate_digest = hashlib.sha256(certificate_path.read_bytes()).hexdigest()
    wanted = f"tree {tree_digest(tree)}\ncertificate {certificate_digest}\n"
    if stamp.is_file() and stamp.read_text() == wanted:
        try:
            return _find_outputs(output_dir, key_path, certificate_path), True
        except BuildError:
            pass  # outputs gone or damaged: build again
    stamp.unlink(missing_ok=True)
    before()
    outputs = run_mkosi(tree, output_dir, key_path, certificate_path, progress=progress)
    check(outputs)
    stamp.write_text(wanted)
    return outputs, False


def forget_builds_of_tree(cache: Path, name: str) -> None:
    """Remove the cached builds of every content of the tree `name`: before a build of its new
    content, since those of earlier contents are never used again (a cache kept across changes
    would grow by a build per change)."""
    for build in cache.glob(glob.escape(name) + "-" + "[0-9a-f]" * 16):
        shutil.rmtree(build, ignore_errors=True)


def build_cached(
    tree: Path,
    *,
    cache: Path | None = None,
    rebuild: bool = False,
    progress: Progress | None = None,
) -> MkosiOutputs:
    """Build `tree` once per content digest and reuse the result (fixtures, the demo image)."""
    directory = (cache or cache_dir() / "images") / f"{tree.name}-{tree_digest(tree)[:16]}"
    done = directory / ".complete"
    key_path, cert_path = directory / "keys" / "signing.key", directory / "keys" / "signing.crt"
    if done.exists() and not rebuild:
        load_key_pair(key_path, cert_path)  # fails loudly if the cached keys were damaged
        return _find_outputs(directory, key_path, cert_path)
    forget_builds_of_tree(directory.parent, tree.name)
    keys = generate_signing_key(f"Ultraviolet {tree.name} signing key")
    write_key_pair(keys, key_path, cert_path)
    outputs = run_mkosi(tree, directory, key_path, cert_path, progress=progress)
    done.write_text("ok\n")
    return outputs

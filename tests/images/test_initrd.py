"""The example image's initrd and firmware, checked on the real build: the trimmed kernel
modules initrd (build/initrd_modules.py) and regulatory.db found from /usr alone."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from ultraviolet.build.initrd_modules import INITRD_MODULES_INCLUDE
from ultraviolet.build.node import build_cached_node
from ultraviolet.diskimage import map_file
from ultraviolet.formats.erofs import ErofsImage, ErofsInode
from ultraviolet.policy import load_policy
from ultraviolet.tools import ToolsChroot

pytestmark = pytest.mark.build

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "container-host.toml"
MODULES = re.compile(r"lib/modules/[^/]+/kernel/(.+\.ko(\.[a-z]+)?)$")
# The default mkosi initrd made a 142 MB UKI (95 MB of it kernel modules); trimmed, ~61 MB.
UKI_LIMIT = 80 * 1024 * 1024


@pytest.fixture(scope="module")
def usr(tools_chroot: ToolsChroot) -> dict[str, tuple[ErofsInode, bytes]]:
    """Every path of the example's /usr with its inode and, for symlinks, the target."""
    result, _ = build_cached_node(load_policy(EXAMPLE))
    (partition,) = sorted(result.release.glob("*.usr.raw"))
    with map_file(partition) as data:
        image = ErofsImage.parse(data)
        return {
            path: (inode, image.read_data(inode) if stat.S_ISLNK(inode.mode) else b"")
            for path, inode in image.walk()
        }


def test_uki_is_small_enough_for_two_on_the_esp(tools_chroot: ToolsChroot) -> None:
    result, _ = build_cached_node(load_policy(EXAMPLE))
    size = result.uki.stat().st_size
    print(f"UKI {size / 1e6:.1f} MB")
    assert size < UKI_LIMIT


def test_every_initrd_pattern_names_modules_of_the_built_kernel(
    usr: dict[str, tuple[ErofsInode, bytes]],
) -> None:
    """A pattern that matches nothing (a module renamed or moved by a kernel update) would
    silently leave that hardware without its driver in the initrd."""
    modules = [m.group(1) for path in usr if (m := MODULES.search(path))]
    assert len(modules) > 1000
    for pattern in INITRD_MODULES_INCLUDE:
        assert any(re.search(pattern, module) for module in modules), pattern


def test_regulatory_db_is_found_in_usr_without_etc(
    usr: dict[str, tuple[ErofsInode, bytes]],
) -> None:
    for name in ("regulatory.db", "regulatory.db.p7s"):
        inode, target = usr[f"lib/firmware/{name}"]
        assert stat.S_ISLNK(inode.mode) and target == f"{name}-debian".encode(), target
        assert stat.S_ISREG(usr[f"lib/firmware/{name}-debian"][0].mode)

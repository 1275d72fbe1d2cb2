"""formats/erofs.py against mkfs.erofs, fsck.erofs and dump.erofs (erofs-utils 1.8).

Images are made by mkfs.erofs from a source tree with what the universal truths look for
(set-id files, file capabilities, device nodes) and what stresses the reader (shared and
inline xattrs, hard links, symlinks, a directory spanning blocks, deep paths, large ids,
a non-UTF-8 name), with the layouts mkfs can choose. Our walk must show exactly the source
tree's names, types, modes, owners, sizes, device numbers and xattrs; dump.erofs must agree on
the superblock and on per-path inode details.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from pathlib import Path

import pytest

from ultraviolet.build.truths import scan_erofs
from ultraviolet.formats.erofs import ErofsError, ErofsImage
from ultraviolet.tools import ToolsChroot

pytestmark = pytest.mark.oracle

# VFS_CAP_REVISION_2: cap_net_raw (13) permitted and effective.
CAPS = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
MKFS_VARIANTS = {
    "default": [],
    "extended": ["-Eforce-inode-extended"],
    "lz4hc-tailpacking": ["-zlz4hc", "-Eztailpacking"],
    "shared-xattrs": ["-x1"],
    "chunks": ["--chunksize=8192"],
    "chunk-indexes": ["--chunksize=4096", "-Eforce-chunk-indexes"],
    "block-2k": ["-b2048"],
}


def make_source_tree(root: Path) -> None:
    """The tree the images are made from (also the source of tests/fixtures/erofs.img.gz)."""
    for directory in ("bin", "lib/dev", "share/big", "share/deep/a/b/c/d/e/f", "share/empty"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    for name, mode in (("su", 0o4755), ("wall", 0o2755), ("ping", 0o755), ("plain", 0o755)):
        (root / "bin" / name).write_bytes(b"\x7fELF" + name.encode() * 3000)
        if name == "wall":
            os.chown(root / "bin" / name, 0, 5)  # before chmod: chown clears set-id bits
        os.chmod(root / "bin" / name, mode)
    os.setxattr(root / "bin" / "ping", "security.capability", CAPS)
    for name in ("plain", "su"):
        os.setxattr(root / "bin" / name, "user.origin", b"ultraviolet test")
    os.setxattr(root / "bin" / "plain", "trusted.note", b"x" * 100)
    os.link(root / "bin" / "plain", root / "bin" / "hardlink")
    os.mknod(root / "lib/dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "lib/dev/loop7", 0o660 | stat.S_IFBLK, os.makedev(7, 7))
    os.mkfifo(root / "lib/dev/fifo")
    os.symlink("../../bin/plain", root / "share/deep/link")
    for index in range(300):  # a directory of several blocks
        (root / "share/big" / f"entry-{index:03d}-with-a-longer-name").write_bytes(bytes(index))
    (root / "share/deep/a/b/c/d/e/f/file").write_bytes(b"deep\n" * 2000)
    owned = root / "share/owned"
    owned.write_text("owned\n")
    os.chown(owned, 1234, 5678)
    large_ids = root / "share/large-ids"
    large_ids.write_text("ids beyond 16 bits need an extended inode\n")
    os.chown(large_ids, 100000, 200000)
    (root / os.fsdecode(b"share/name-\xff")).write_bytes(b"")


def expected_tree(root: Path) -> dict[str, tuple[int, int, int, int, int, dict[str, bytes]]]:
    """path -> (mode, uid, gid, size for files/symlinks, rdev, xattrs) from the source tree."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(directory) / name
            info = path.lstat()
            size = info.st_size if not stat.S_ISDIR(info.st_mode) else 0
            xattrs = {x: os.getxattr(path, x, follow_symlinks=False) for x in _listxattr(path)}
            relative = os.fsdecode(path.relative_to(root))
            found[relative] = (info.st_mode, info.st_uid, info.st_gid, size, info.st_rdev, xattrs)
    return found


def _listxattr(path: Path) -> list[str]:
    if path.is_symlink():
        return []
    return sorted(os.listxattr(path, follow_symlinks=False))


def walked(image: ErofsImage) -> dict[str, tuple[int, int, int, int, int, dict[str, bytes]]]:
    found = {}
    for path, inode in image.walk():
        size = 0 if inode.is_dir else inode.size
        xattrs = {x.name: x.value for x in image.xattrs(inode)}
        found[path] = (inode.mode, inode.uid, inode.gid, size, inode.rdev, xattrs)
    return found


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, tools_chroot: ToolsChroot) -> Path:
    root = tmp_path_factory.mktemp("erofs-source") / "tree"
    make_source_tree(root)
    return root


def mkfs(tools_chroot: ToolsChroot, source: Path, image: Path, options: list[str]) -> Path:
    tools_chroot.run(
        ["mkfs.erofs", "--quiet", "-T0", "-Uclear", *options, str(image), str(source)],
        binds=[source, image.parent],
    )
    tools_chroot.run(["fsck.erofs", str(image)], binds=[image.parent])
    return image


@pytest.mark.parametrize("variant", sorted(MKFS_VARIANTS))
def test_walk_equals_the_source_tree(
    variant: str, source: Path, tools_chroot: ToolsChroot, tmp_path: Path
) -> None:
    image_path = mkfs(tools_chroot, source, tmp_path / "image.erofs", MKFS_VARIANTS[variant])
    image = ErofsImage.parse(image_path.read_bytes())
    ours = walked(image)
    theirs = expected_tree(source)
    assert sorted(ours) == sorted(theirs)
    for path, expected in theirs.items():
        assert ours[path] == expected, path
    inodes = [inode for _, inode in image.walk()]
    if variant != "extended":  # mkfs picks compact inodes unless a field needs more room
        assert {inode.extended for inode in inodes} == {False, True}
    offenders = scan_erofs(image, "/usr", allowed=["/usr/bin/wall"])
    assert [(o.path, o.problem) for o in offenders] == [
        ("/usr/bin/ping", "file capabilities"),
        ("/usr/bin/su", "set-uid/set-gid bit"),
        ("/usr/lib/dev/loop7", "device node outside /dev"),
        ("/usr/lib/dev/null", "device node outside /dev"),
    ]


def _dump(tools_chroot: ToolsChroot, image: Path, *arguments: str) -> str:
    return tools_chroot.run(["dump.erofs", *arguments, str(image)], binds=[image.parent]).text


@pytest.mark.parametrize("variant", ["default", "extended", "shared-xattrs", "block-2k"])
def test_inodes_and_superblock_equal_dump_erofs(
    variant: str, source: Path, tools_chroot: ToolsChroot, tmp_path: Path
) -> None:
    image_path = mkfs(tools_chroot, source, tmp_path / "image.erofs", MKFS_VARIANTS[variant])
    image = ErofsImage.parse(image_path.read_bytes())
    superblock = _dump(tools_chroot, image_path, "-s")
    fields = dict(re.findall(r"^Filesystem ([^:]+):\s+(.*)$", superblock, re.MULTILINE))
    assert int(fields["blocksize"]) == image.superblock.block_size
    assert int(fields["blocks"]) == image.superblock.blocks
    assert int(fields["root nid"]) == image.superblock.root_nid
    assert int(fields["inode count"]) == image.superblock.inode_count
    assert int(fields["inode metadata start block"]) == image.superblock.meta_blkaddr
    paths = dict(image.walk())
    for path in ("bin/su", "bin/ping", "bin/plain", "share/large-ids", "share/big", "lib/dev"):
        inode = paths[path]
        shown = _dump(tools_chroot, image_path, f"--path=/{path}")
        nid, links, layout = re.search(r"NID: (\d+)\s+Links: (\d+)\s+Layout: (\d+)", shown).groups()  # type: ignore[union-attr]
        inode_size, xattr_size = re.search(r"Inode size: (\d+)\s+Xattr size: (\d+)", shown).groups()  # type: ignore[union-attr]
        uid, gid, access = re.search(r"Uid: (\d+)\s+Gid: (\d+)\s+Access: (\d+)", shown).groups()  # type: ignore[union-attr]
        assert (int(nid), int(links), int(layout)) == (inode.nid, inode.nlink, inode.layout)
        assert int(inode_size) == (64 if inode.extended else 32)
        assert int(xattr_size) == inode.xattr_size
        # dump.erofs shows the permission bits only (the source-tree test covers set-id bits).
        assert (int(uid), int(gid), int(access, 8)) == (inode.uid, inode.gid, inode.mode & 0o777)


def test_corrupt_real_image_raises_with_offset(
    source: Path, tools_chroot: ToolsChroot, tmp_path: Path
) -> None:
    data = bytearray(mkfs(tools_chroot, source, tmp_path / "image.erofs", []).read_bytes())
    data[1024 + 40] ^= 0x01  # meta_blkaddr: the checksum no longer matches
    with pytest.raises(ErofsError, match="checksum") as caught:
        ErofsImage.parse(bytes(data))
    assert caught.value.offset == 1028

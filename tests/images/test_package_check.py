"""The set-id check before mkosi, against the Debian archive: apt in the tools chroot resolves
what mkosi would install, the .debs are read, and a policy whose packages bring a set-id
binary that is not allow-listed fails before mkosi runs, naming its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from ultraviolet.build.keyset import init_keys, load_keys
from ultraviolet.build.node import build_node, example_policy_path
from ultraviolet.build.packages import PackageCheck, check_package_set_ids
from ultraviolet.build.render import render_tree
from ultraviolet.policy.load import PolicyValidationError, load_policy
from ultraviolet.policy.model import NodePolicy
from ultraviolet.tools import ToolsChroot

from ..formats.test_deb import _dpkg_contents, _members

pytestmark = pytest.mark.build

EXAMPLE_PACKAGES = 'packages = ["containerd", "runc"]'


def _policy(tmp_path: Path, packages: str = "", suid_allow: str = "") -> NodePolicy:
    text = example_policy_path().read_text()
    assert EXAMPLE_PACKAGES in text
    text = text.replace(
        EXAMPLE_PACKAGES, f'packages = [\n    "containerd",\n    "runc",{packages}\n]'
    )
    if suid_allow:
        text = text.replace("[integrity]\n", f"[integrity]\nsuid_allow = {suid_allow}\n")
    path = tmp_path / "host.toml"
    path.write_text(text)
    return load_policy(path)


def _tree(policy: NodePolicy, tmp_path: Path) -> Path:
    return render_tree(policy, tmp_path / "tree").directory


def test_example_passes_reading_only_what_its_packages_bring(
    tools_chroot: ToolsChroot, tmp_path: Path
) -> None:
    policy = load_policy(example_policy_path())
    tree = _tree(policy, tmp_path)
    check_package_set_ids(policy, tree, chroot=tools_chroot)  # passes
    check = PackageCheck(tree, chroot=tools_chroot)
    check.state = tmp_path / "state"  # no per-.deb records: what is read now shows
    packages = check.package_set(policy.image.packages)
    names = {p.name for p in packages.packages}
    assert {"containerd", "runc", "systemd", "base-files", "linux-image-amd64"} <= names
    # Only what the policy's entries bring is read; the base (its set-id bits are stripped by
    # the finalize script) is not, the kernel's .deb above all.
    read = {p.name for p in packages.packages if p.set_id is not None}
    assert {"containerd", "runc"} <= read
    assert not read & {"linux-image-amd64", "systemd", "util-linux", "login", "base-files"}
    assert any(p.name.startswith("linux-image-6") and p.set_id is None for p in packages.packages)


def test_a_base_package_named_by_the_policy_is_read_and_charged(
    tools_chroot: ToolsChroot, tmp_path: Path
) -> None:
    """mount is in every image (the base strips its bits), but a policy that names it asks
    for it: then its set-uid files need the allow-list like any package's."""
    policy = _policy(tmp_path, '\n    "mount",')
    with pytest.raises(PolicyValidationError, match=r'package "mount" installs set-uid /usr/bin/'):
        check_package_set_ids(policy, _tree(policy, tmp_path), chroot=tools_chroot)


def test_sudo_without_allow_list_fails_before_mkosi(
    tools_chroot: ToolsChroot, tmp_path: Path
) -> None:
    policy = _policy(tmp_path, '\n    "sudo",')
    output = tmp_path / "out"
    lines: list[str] = []
    keys = tmp_path / "keys"
    init_keys(keys)
    with pytest.raises(PolicyValidationError) as failure:
        build_node(policy, output, load_keys(keys), progress=lines.append)
    assert str(failure.value).endswith(
        f'{policy.source}:9: image.packages: package "sudo" installs set-uid /usr/bin/sudo: '
        'remove it from [image] packages or add "/usr/bin/sudo" to [integrity] suid_allow'
    )
    assert not (output / "mkosi").exists()
    assert not any("mkosi" in line and "running" in line for line in lines), lines


def test_sudo_allow_listed_passes(tools_chroot: ToolsChroot, tmp_path: Path) -> None:
    policy = _policy(tmp_path, '\n    "sudo",', '["/usr/bin/sudo"]')
    packages = check_package_set_ids(policy, _tree(policy, tmp_path), chroot=tools_chroot)
    (sudo,) = [p for p in packages.packages if p.name == "sudo"]
    assert [f.path for f in sudo.set_id] == ["/usr/bin/sudo"]


def test_dependency_is_charged_to_its_entry(tools_chroot: ToolsChroot, tmp_path: Path) -> None:
    """openssh-client is not in the base; its set-uid ssh-keysign comes with sshfs."""
    policy = _policy(tmp_path, '\n    "sshfs",')
    with pytest.raises(PolicyValidationError) as failure:
        check_package_set_ids(policy, _tree(policy, tmp_path), chroot=tools_chroot)
    (issue,) = failure.value.issues
    assert issue.line == 9
    assert issue.message.startswith(
        'package "openssh-client" (via "sshfs") installs set-uid /usr/lib/openssh/ssh-keysign: '
        'remove "sshfs" from [image] packages or add "/usr/lib/openssh/ssh-keysign" to'
    )


def test_unknown_package_is_named_with_its_line(tools_chroot: ToolsChroot, tmp_path: Path) -> None:
    policy = _policy(tmp_path, '\n    "no-such-package-uv",')
    with pytest.raises(PolicyValidationError, match=r":9: image.packages: package "):
        check_package_set_ids(policy, _tree(policy, tmp_path), chroot=tools_chroot)


def test_resolution_and_summaries_are_cached(tools_chroot: ToolsChroot, tmp_path: Path) -> None:
    policy = load_policy(example_policy_path())
    check = PackageCheck(_tree(policy, tmp_path), chroot=tools_chroot)
    packages = check.package_set(policy.image.packages)
    files = check.resolve()
    assert len(files) == len(packages.packages)
    assert all((check.archives / name).is_file() for name in files)  # where mkosi looks
    records = check.state / "debs"
    assert all(any(records.glob(f"{name}.v*.json")) for name in files)


def test_debian_packages_read_as_dpkg_deb_lists_them(
    tools_chroot: ToolsChroot, tmp_path: Path
) -> None:
    """Real Debian packages of the example's set (set-id ones among them) read by formats.deb
    as `dpkg-deb --contents` lists them."""
    check = PackageCheck(_tree(load_policy(example_policy_path()), tmp_path), chroot=tools_chroot)
    debs = sorted(check.archives / name for name in check.resolve())
    chosen = [d for d in debs if d.name.startswith(("passwd_", "mount_", "util-linux_"))]
    assert len(chosen) == 3, chosen
    chosen += debs[:: max(1, len(debs) // 8)]
    for deb in chosen:
        assert _members(deb.read_bytes()) == _dpkg_contents(tools_chroot, deb), deb.name

"""The mkosi tree rendered from a node policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from ultraviolet.build.mkosi import tree_digest
from ultraviolet.build.render import build_repart, mkosi_conf, render_tree
from ultraviolet.errors import BuildError
from ultraviolet.formats.ipe import parse_ipe
from ultraviolet.formats.unitfile import parse_unit
from ultraviolet.policy import load_policy, parse_policy

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "container-host.toml"


def test_example_tree(tmp_path: Path) -> None:
    policy = load_policy(EXAMPLE)
    rendered = render_tree(policy, tmp_path / "tree")
    conf = parse_unit((tmp_path / "tree" / "mkosi.conf").read_text())
    assert conf.get("Output", "ImageId") == "container-host"
    assert conf.get("Output", "ImageVersion") == "1.0.0"
    assert {"containerd", "runc", "linux-image-amd64"} <= set(conf.get_all("Content", "Packages"))
    # The policy's command line goes into the UKI after mkosi, not into the mkosi tree.
    assert conf.get("Content", "KernelCommandLine") == "console=ttyS0 systemd.firstboot=no rw"
    assert rendered.cmdline == ("rootflags=noexec,nosuid,nodev", "quiet")
    assert (tmp_path / "tree" / "mkosi.finalize").stat().st_mode & 0o111
    extra = tmp_path / "tree" / "mkosi.extra" / "usr" / "lib"
    assert (extra / "repart.d" / "50-root.conf").is_file()
    assert (extra / "sysupdate.d" / "60-uki.transfer").is_file()
    assert rendered.ipe_policy is not None
    assert parse_ipe(rendered.ipe_policy).name == "container-host"
    assert not (extra / "ultraviolet").exists()  # the IPE policy travels in the initrd
    sources = tmp_path / "tree" / "mkosi.sandbox" / "etc" / "apt" / "sources.list.d"
    assert (sources / "mkosi.sources").is_file()


def test_usr_slot_a_is_labelled_for_sysupdate() -> None:
    policy = parse_policy('[image]\nname = "n"\nversion = "2.1"\n')
    usr = build_repart(policy)["10-usr.conf"]
    assert usr.get("Partition", "Label") == "n_2.1"
    assert usr.get("Partition", "Verity") == "data"


def test_secure_boot_and_auto_enroll() -> None:
    policy = parse_policy(
        '[image]\nname = "n"\nversion = "1"\n[boot]\nsecure_boot_auto_enroll = true\n'
    )
    assert mkosi_conf(policy).get("Validation", "SecureBootAutoEnroll") == "yes"


def test_missing_extra_tree(tmp_path: Path) -> None:
    node = tmp_path / "node.toml"
    node.write_text('[image]\nname = "n"\nversion = "1"\nextra_tree = "files"\n')
    with pytest.raises(BuildError, match="not a directory"):
        render_tree(load_policy(node), tmp_path / "tree")


def test_extra_tree_is_copied(tmp_path: Path) -> None:
    node = tmp_path / "node.toml"
    node.write_text('[image]\nname = "n"\nversion = "1"\nextra_tree = "files"\n')
    (tmp_path / "files" / "usr" / "share").mkdir(parents=True)
    (tmp_path / "files" / "usr" / "share" / "motd").write_text("hi")
    render_tree(load_policy(node), tmp_path / "tree")
    assert (tmp_path / "tree" / "mkosi.extra" / "usr" / "share" / "motd").read_text() == "hi"


def test_uki_only_changes_keep_the_tree_digest(tmp_path: Path) -> None:
    """What lets a policy-only rebuild reuse mkosi's /usr: the command line and the IPE rules
    are not part of the mkosi tree; packages are."""
    base = '[image]\nname = "n"\nversion = "1.0"\n'
    variants = {
        "base": base,
        "cmdline": base + '[boot]\ncmdline = ["quiet", "loglevel=3"]\n',
        "ipe": base + '[integrity]\nipe_mode = "audit"\nfirmware = "any"\n',
        "packages": base.replace('version = "1.0"', 'version = "1.0"\npackages = ["jq"]'),
    }
    digests = {}
    for name, text in variants.items():
        rendered = render_tree(parse_policy(text), tmp_path / name)
        digests[name] = tree_digest(rendered.directory)
    assert digests["cmdline"] == digests["base"]
    assert digests["ipe"] == digests["base"]
    assert digests["packages"] != digests["base"]


@pytest.mark.parametrize(
    ("update", "expected"),
    [
        ("", set()),
        ('[update]\nsource = "/var/lib/releases"\n', {"systemd-container"}),
        ('[update]\nsource = "https://updates.example.org/host"\n', {"systemd-container", "gpg"}),
        (
            '[update]\nsource = "https://u.example.org/h"\nverify_manifest = false\n',
            {"systemd-container"},
        ),
    ],
)
def test_update_tools_are_installed_only_when_updates_are(update: str, expected: set[str]) -> None:
    policy = parse_policy('[image]\nname = "n"\nversion = "1"\n' + update)
    packages = set(mkosi_conf(policy).get_all("Content", "Packages"))
    assert packages & {"systemd-container", "gpg"} == expected

"""Set-id files before mkosi: which [image] packages entry is charged with which file, the
policy line and the fix in the message, and where .deb members end up."""

from __future__ import annotations

from ultraviolet.build.packages import installed_path
from ultraviolet.build.set_id import (
    DebSummary,
    SetIdFile,
    package_entry_lines,
    set_id_error,
    set_id_offenders,
    unknown_packages_error,
)
from ultraviolet.errors import BuildError
from ultraviolet.policy.load import PolicyValidationError, parse_policy

SUID, SGID = 0o4000, 0o2000


def deb(
    name: str,
    *depends: str,
    set_id: tuple[SetIdFile, ...] = (),
    essential: bool = False,
    provides: tuple[str, ...] = (),
) -> DebSummary:
    return DebSummary(name, "1.0", essential, depends, provides, set_id)


PASSWD = SetIdFile("/usr/bin/passwd", SUID)
CHAGE = SetIdFile("/usr/bin/chage", SGID)
SUDO = SetIdFile("/usr/bin/sudo", SUID)
MOUNT = SetIdFile("/usr/bin/mount", SUID)
PACKAGES = [
    deb("libc6", essential=True),
    deb("util-linux", "libc6", essential=True),
    deb("systemd", "libc6", "mount"),
    deb("mount", "libc6", set_id=(MOUNT,)),
    deb("login", "libc6", "passwd"),
    deb("passwd", "libc6", set_id=(PASSWD, CHAGE)),
    deb("sudo", "libc6", "default-logind | logind", set_id=(SUDO,)),
    deb("systemd-logind-provider", "systemd", provides=("logind",)),
]
REQUESTED = ["systemd", "login", "sudo"]

POLICY = """[image]
name = "host"
version = "1.0.0"
packages = [
    "login",   # brings passwd
    'sudo',
]
"""


def test_entries_are_charged_with_what_they_add_beyond_the_base() -> None:
    offenders = set_id_offenders(["login", "sudo"], [], REQUESTED, PACKAGES)
    found = [(o.entry, o.package, o.file.path) for o in offenders]
    assert found == [
        ("login", "passwd", "/usr/bin/passwd"),
        ("login", "passwd", "/usr/bin/chage"),
        ("sudo", "sudo", "/usr/bin/sudo"),
    ]  # mount comes with systemd, which the base (Ultraviolet's own packages) has


def test_allow_list_and_a_named_base_package() -> None:
    allowed = ["/usr/bin/passwd", "/usr/bin/chage", "/usr/bin/sudo"]
    assert set_id_offenders(["login", "sudo"], allowed, REQUESTED, PACKAGES) == []
    # Naming a base package asks for it: its own set-id files count, its base deps do not.
    named = set_id_offenders(["mount"], [], [*REQUESTED, "mount"], PACKAGES)
    assert [(o.entry, o.package, o.file.path) for o in named] == [
        ("mount", "mount", "/usr/bin/mount")
    ]


def test_virtual_package_entry_resolves_to_its_provider() -> None:
    packages = [
        *PACKAGES,
        deb("doas", set_id=(SetIdFile("/usr/bin/doas", SUID),), provides=("su-tool",)),
    ]
    (offender,) = set_id_offenders(["su-tool"], [], ["su-tool"], packages)
    assert (offender.entry, offender.package) == ("su-tool", "doas")


def test_entry_lines_of_the_packages_array() -> None:
    key_line, entries = package_entry_lines(POLICY)
    assert key_line == 4
    assert entries == {"login": 5, "sudo": 6}
    one_line = '[boot]\npackages = ["x"]\n[image]\npackages = ["a", "b"] # c\n'
    assert package_entry_lines(one_line) == (4, {"a": 4, "b": 4})
    assert package_entry_lines("[image]\nname = 'x'\n") == (None, {})


def test_error_names_file_line_and_fix() -> None:
    policy = parse_policy(POLICY, source="host.toml")
    error = set_id_error(policy, POLICY, REQUESTED, PACKAGES)
    assert isinstance(error, PolicyValidationError)
    assert [str(issue) for issue in error.issues] == [
        'host.toml:5: image.packages: package "passwd" (via "login") installs set-uid '
        '/usr/bin/passwd: remove "login" from [image] packages or add "/usr/bin/passwd" to '
        "[integrity] suid_allow",
        'host.toml:5: image.packages: package "passwd" (via "login") installs set-gid '
        '/usr/bin/chage: remove "login" from [image] packages or add "/usr/bin/chage" to '
        "[integrity] suid_allow",
        'host.toml:6: image.packages: package "sudo" installs set-uid /usr/bin/sudo: remove it '
        'from [image] packages or add "/usr/bin/sudo" to [integrity] suid_allow',
    ]
    # Without the policy's text (parsed from elsewhere) the issues carry no line.
    unlocated = set_id_error(policy, None, REQUESTED, PACKAGES)
    assert unlocated is not None and all(i.line is None for i in unlocated.issues)


def test_allow_listed_policy_has_no_error() -> None:
    allowed = (
        POLICY
        + '[integrity]\nsuid_allow = ["/usr/bin/passwd", "/usr/bin/chage", "/usr/bin/sudo"]\n'
    )
    policy = parse_policy(allowed, source="host.toml")
    assert set_id_error(policy, allowed, REQUESTED, PACKAGES) is None


def test_unknown_packages() -> None:
    policy = parse_policy(POLICY, source="host.toml")
    error = unknown_packages_error(policy, POLICY, ["sudo"])
    assert str(error).endswith(
        'host.toml:6: image.packages: package "sudo" is not in the Debian archive'
    )
    assert isinstance(unknown_packages_error(policy, POLICY, ["systemd"]), BuildError)


def test_set_id_kinds() -> None:
    assert SetIdFile("/usr/bin/x", SUID | SGID).kind == "set-uid/set-gid"
    assert CHAGE.kind == "set-gid"


def test_installed_paths_follow_merged_usr() -> None:
    assert installed_path("./usr/bin/su") == "/usr/bin/su"
    assert installed_path("./bin/su") == "/usr/bin/su"
    assert installed_path("./sbin/unix_chkpwd") == "/usr/sbin/unix_chkpwd"
    assert installed_path("./lib64/x") == "/usr/lib64/x"
    assert installed_path("./etc/x") is None
    assert installed_path("./binary") is None

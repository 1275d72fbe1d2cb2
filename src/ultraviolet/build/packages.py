"""Before mkosi runs: the exact package set it will install, and the set-id files in it.

mkosi 25 installs Debian as `apt-get install ?essential base-files`, then the Packages= of
mkosi.conf, without recommends, from the sources in the tree's mkosi.sandbox. The same
resolution is done here with apt in the tools chroot on an empty dpkg status, with apt state
of our own; the .debs are downloaded into mkosi's package cache (PACKAGE_CACHE/cache/apt/
archives, where mkosi's apt finds them again, so the check costs no second download) and read
in place (formats/deb.py). What each .deb installs set-id is cached per file name
(name_version_arch never changes content), so a warm check costs one `apt-get update`.

Set-id files of the base system (the essential set and Ultraviolet's own packages) are
stripped by the finalize script as before; a package the policy asks for in [image] packages
(and whatever it pulls in beyond the base) must not bring a set-id file that is not in
[integrity] suid_allow: such a policy fails here, naming the policy line. The scan of the built
/usr (truths.py) stays as the backstop for what only exists after installation (file
capabilities, dpkg-statoverride, maintainer scripts).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ultraviolet.build.mkosi import package_cache_dir
from ultraviolet.build.set_id import (
    DebSummary,
    SetIdFile,
    charged_packages,
    set_id_error,
    unknown_packages_error,
)
from ultraviolet.errors import BuildError, FormatError
from ultraviolet.formats.deb import read_deb
from ultraviolet.formats.unitfile import parse_unit
from ultraviolet.policy.model import NodePolicy
from ultraviolet.tools import ToolsChroot, tools

log = logging.getLogger("ultraviolet.build.packages")

# Part of the per-.deb cache key: bump when what is recorded about a .deb changes.
SUMMARY_VERSION = 1
DEB_ARCHITECTURES = {"x86-64": "amd64"}
_INST = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) .*\[([a-z0-9-]+)\]\)", re.MULTILINE)
_UNKNOWN = re.compile(r"Unable to locate package (\S+)")
# A .deb never shipped to /usr only through /bin, /sbin or /lib: mkosi makes those symlinks
# into /usr first (merged /usr), so such members land in /usr as well.
_MERGED = ("bin/", "sbin/", "lib/", "lib32/", "lib64/", "libx32/")


@dataclass(frozen=True)
class PackageSet:
    """The packages mkosi will install, each with its summary; `requested` the Packages=."""

    requested: tuple[str, ...]
    packages: tuple[DebSummary, ...]


def installed_path(member: str) -> str | None:
    """Where a data.tar member ends up as truths.py and suid_allow name it ("/usr/bin/su"), or
    None when outside /usr (the writable root, mounted nosuid)."""
    relative = member.removeprefix("./").lstrip("/")
    if relative.startswith(_MERGED):
        relative = "usr/" + relative
    return "/" + relative if relative.startswith("usr/") else None


def summarize_deb(data: bytes, source: str, *, contents: bool = True) -> DebSummary:
    """The package's relations and (with `contents`, which decompresses data.tar) its set-id
    files in /usr."""
    try:
        deb = read_deb(data, contents=contents)
    except FormatError as exc:
        raise BuildError(f"{source}: cannot read the package: {exc}") from exc
    set_id = []
    for member in deb.set_id_members():
        path = installed_path(member.path)
        if path is not None:
            set_id.append(SetIdFile(path, member.mode & 0o6000))
    return DebSummary(
        name=deb.name,
        version=deb.version,
        essential=(deb.field("Essential") or "").lower() == "yes",
        depends=tuple(
            dict.fromkeys((*deb.relation_names("Pre-Depends"), *deb.relation_names("Depends")))
        ),
        provides=deb.relation_names("Provides"),
        set_id=tuple(sorted(set_id)) if contents else None,
    )


class PackageCheck:
    """apt in the tools chroot with its own state in `state` and mkosi's archive of .debs."""

    def __init__(self, tree: Path, *, chroot: ToolsChroot | None = None) -> None:
        self.tree = tree
        self.chroot = chroot or tools()
        # With the .debs: an empty package cache (a cold build) starts the check cold too.
        self.state = package_cache_dir() / "package-check"
        self.archives = package_cache_dir() / "cache" / "apt" / "archives"
        conf = parse_unit((tree / "mkosi.conf").read_text(), source=str(tree / "mkosi.conf"))
        self.requested = tuple(
            word for value in conf.get_all("Content", "Packages") for word in value.split()
        )
        architecture = conf.get("Distribution", "Architecture") or "x86-64"
        if architecture not in DEB_ARCHITECTURES:
            raise BuildError(f"{tree}/mkosi.conf: architecture {architecture!r} is not supported")
        self.architecture = DEB_ARCHITECTURES[architecture]
        self.sources = tree / "mkosi.sandbox" / "etc" / "apt" / "sources.list.d"
        if not any(self.sources.glob("*.sources")):
            raise BuildError(f"{self.sources}: no apt sources (mkosi.sandbox) in the tree")

    def _apt(self, command: str, *arguments: str, check: bool = True) -> tuple[int, str]:
        state = self.state
        options = {
            "APT::Architecture": self.architecture,
            "APT::Architectures": self.architecture,
            "APT::Install-Recommends": "false",  # mkosi's WithRecommends=no default
            "APT::Get::Assume-Yes": "true",
            "APT::Sandbox::User": "root",
            "Acquire::Languages": "none",
            "Acquire::AllowReleaseInfoChange": "true",
            "Dir::State": str(state / "apt-state"),
            "Dir::State::Status": str(state / "empty-status"),
            "Dir::Cache": str(state / "apt-cache"),
            "Dir::Cache::Archives": str(self.archives),
            "Dir::Log": str(state / "apt-log"),
            "Dir::Etc::SourceList": "/dev/null",
            "Dir::Etc::SourceParts": str(self.sources),
            "Debug::NoLocking": "true",
            "pkgCacheGen::ForceEssential": ",",  # as mkosi: ?essential means Essential: yes
        }
        argv = ["apt-get", "-q"]
        for key, value in options.items():
            argv += ["-o", f"{key}={value}"]
        result = self.chroot.run(
            [*argv, command, *arguments],
            binds=[state, self.archives, self.sources],
            check=False,
            timeout=1800,
        )
        output = result.text + result.stderr.decode("utf-8", errors="replace")
        if check and result.returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-15:])
            raise BuildError(f"apt-get {command} for the package check failed:\n{tail}")
        return result.returncode, output

    def _prepare(self) -> None:
        for directory in ("apt-state/lists/partial", "apt-cache", "apt-log"):
            (self.state / directory).mkdir(parents=True, exist_ok=True)
        (self.archives / "partial").mkdir(parents=True, exist_ok=True)
        (self.state / "empty-status").write_bytes(b"")

    def _index_digest(self) -> str:
        """What the resolution depends on: the archive's Release files and the request."""
        digest = hashlib.sha256(json.dumps([self.architecture, self.requested]).encode())
        for release in sorted((self.state / "apt-state" / "lists").glob("*Release")):
            digest.update(release.name.encode() + b"\0" + release.read_bytes())
        return digest.hexdigest()

    def resolve(self) -> list[str]:
        """The .deb file names (in mkosi's archive) of everything mkosi will install; the
        resolution is cached per archive state, the .debs are downloaded when missing."""
        self._prepare()
        # apt runs without its own locks (as in mkosi): concurrent builds take turns here.
        with (self.state / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._resolve_locked()

    def _resolve_locked(self) -> list[str]:
        self._update()
        request = ["?essential", "base-files", *self.requested]
        record = self.state / "resolutions" / f"{self._index_digest()}.json"
        if record.is_file():
            files: list[str] = json.loads(record.read_text())
        else:
            returncode, output = self._apt("install", "--simulate", *request, check=False)
            if returncode != 0:
                self._fail_resolution(output)
            files = [
                f"{name}_{version.replace(':', '%3a')}_{arch}.deb"
                for name, version, arch in _INST.findall(output)
            ]
            if not files:
                raise BuildError(f"apt-get resolved no packages for {request}:\n{output[-2000:]}")
        if any(not (self.archives / name).is_file() for name in files):
            self._apt("install", "--download-only", *request)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(files))
        return files

    def _update(self) -> None:
        """apt-get update; when the archive cannot be reached, lists fetched earlier still
        resolve (mkosi, if it runs, fails on its own; a reused mkosi build needs no network)
        and the scan of the built /usr remains the backstop."""
        returncode, output = self._apt("update", check=False)
        if returncode == 0:
            return
        lists = self.state / "apt-state" / "lists"
        if not any(lists.glob("*Packages*")):
            tail = "\n".join(output.strip().splitlines()[-15:])
            raise BuildError(f"apt-get update for the package check failed:\n{tail}")
        log.warning("apt-get update failed; checking with the package lists fetched before")

    def _fail_resolution(self, output: str) -> None:
        unknown = _UNKNOWN.findall(output)
        tail = "\n".join(output.strip().splitlines()[-15:])
        if unknown:
            raise UnknownPackages(tuple(dict.fromkeys(unknown)), tail)
        raise BuildError(f"apt-get cannot resolve the package set:\n{tail}")

    def summary(self, file_name: str, *, contents: bool) -> DebSummary:
        record = self.state / "debs" / f"{file_name}.v{SUMMARY_VERSION}.json"
        if record.is_file():
            cached = _summary_from_json(json.loads(record.read_text()))
            if cached.set_id is not None or not contents:
                return cached
        path = self.archives / file_name
        if not path.is_file():
            raise BuildError(f"{path}: apt did not download it")
        summary = summarize_deb(path.read_bytes(), str(path), contents=contents)
        record.parent.mkdir(parents=True, exist_ok=True)
        temporary = record.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")
        temporary.write_text(json.dumps(_summary_to_json(summary)))
        temporary.replace(record)
        return summary

    def package_set(self, entries: Sequence[str]) -> PackageSet:
        """Every package's relations, and the files of those `entries` (the policy's [image]
        packages) are charged with. The base's files are never read: its set-id bits are
        stripped anyway, and its largest packages (the kernel) would cost seconds each."""
        files = self.resolve()
        # Reading data.tar is mostly xz decompression, which releases the GIL: the charged
        # .debs not read before are read on every core.
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            controls = list(pool.map(partial(self.summary, contents=False), files))
            charged = {name for _, name in charged_packages(entries, self.requested, controls)}
            wanted = [file for file, s in zip(files, controls, strict=True) if s.name in charged]
            summaries = pool.map(partial(self.summary, contents=True), wanted)
            read = dict(zip(wanted, summaries, strict=True))
        every = tuple(read.get(f, s) for f, s in zip(files, controls, strict=True))
        return PackageSet(self.requested, every)


class UnknownPackages(BuildError):
    """apt knows no package of these names."""

    def __init__(self, names: Sequence[str], output: str) -> None:
        self.names = tuple(names)
        super().__init__(f"unknown package(s) {', '.join(self.names)}:\n{output}")


def _summary_to_json(summary: DebSummary) -> dict[str, object]:
    return {
        "name": summary.name,
        "version": summary.version,
        "essential": summary.essential,
        "depends": list(summary.depends),
        "provides": list(summary.provides),
        "set_id": None if summary.set_id is None else [[f.path, f.bits] for f in summary.set_id],
    }


def _summary_from_json(data: dict[str, object]) -> DebSummary:
    def strings(key: str) -> tuple[str, ...]:
        value = data[key]
        assert isinstance(value, list)
        return tuple(str(v) for v in value)

    set_id = data["set_id"]
    assert set_id is None or isinstance(set_id, list)
    return DebSummary(
        name=str(data["name"]),
        version=str(data["version"]),
        essential=bool(data["essential"]),
        depends=strings("depends"),
        provides=strings("provides"),
        set_id=None
        if set_id is None
        else tuple(SetIdFile(str(path), int(bits)) for path, bits in set_id),
    )


def check_package_set_ids(
    policy: NodePolicy,
    tree: Path,
    *,
    chroot: ToolsChroot | None = None,
    policy_text: str | None = None,
) -> PackageSet:
    """Fail (PolicyError naming the policy line) when a package of [image] packages brings a
    set-id file into /usr that [integrity] suid_allow does not list; return the package set."""
    check = PackageCheck(tree, chroot=chroot)
    text = policy_text if policy_text is not None else _policy_text(policy)
    try:
        packages = check.package_set(policy.image.packages)
    except UnknownPackages as exc:
        raise unknown_packages_error(policy, text, exc.names) from exc
    error = set_id_error(policy, text, packages.requested, packages.packages)
    if error is not None:
        raise error
    return packages


def _policy_text(policy: NodePolicy) -> str | None:
    """The policy's text when its source file still holds exactly what was parsed."""
    path = Path(policy.source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return text if hashlib.sha256(text.encode()).hexdigest() == policy.digest else None

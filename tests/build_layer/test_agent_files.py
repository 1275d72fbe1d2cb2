"""The attestation agent in the image (build/agent.py) and the service entry it runs
(node/service.py): files, packages, preset, the modules copied, the configuration and its
credential override; systemd and Debian's own Python as oracles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ultraviolet.build.agent import (
    AGENT_UNIT,
    CONFIG_PATH,
    NETWORK_PATH,
    POSTINST,
    SITE_PACKAGES,
    SYSUSERS_PATH,
    UNIT_PATH,
    agent_files,
    agent_modules,
)
from ultraviolet.build.factory import PRESET
from ultraviolet.build.render import render_tree
from ultraviolet.errors import AttestationError
from ultraviolet.formats.unitfile import parse_unit
from ultraviolet.node.service import (
    VERIFIER_CREDENTIAL,
    ServiceConfig,
    parse_config,
    verifier_url,
)
from ultraviolet.policy import parse_policy
from ultraviolet.policy.model import NodePolicy
from ultraviolet.tools import ToolsChroot

BASE = '[image]\nname = "fixture"\nversion = "1.2.3"\n'
URL = "https://verifier.example:8443"


def _policy(attestation: str = "") -> NodePolicy:
    return parse_policy(BASE + "[attestation]\n" + attestation, source="node.toml")


def _with_agent(extra: str = "") -> NodePolicy:
    return _policy(f'verifier_url = "{URL}"\n' + extra)


def test_no_verifier_no_agent(tmp_path: Path) -> None:
    policy = _policy()
    assert agent_files(policy) == {}
    tree = render_tree(policy, tmp_path / "tree").directory
    assert not (tree / "mkosi.extra" / UNIT_PATH).exists()
    assert not (tree / POSTINST).exists()
    assert not (tree / "mkosi.extra" / SITE_PACKAGES).exists()
    assert "python3" not in (tree / "mkosi.conf").read_text()
    assert AGENT_UNIT not in (tree / "mkosi.extra" / PRESET).read_text()


def test_the_unit_never_gates_boot_and_keeps_state_in_var() -> None:
    unit = parse_unit(agent_files(_with_agent())[UNIT_PATH])
    assert unit.get("Service", "Type") == "simple"
    assert unit.get("Service", "Restart") == "on-failure"
    assert unit.get("Service", "StateDirectory") == "ultraviolet/agent"
    assert "network-online.target" in unit.get("Unit", "After").split()
    assert unit.get("Install", "WantedBy") == "multi-user.target"
    text = agent_files(_with_agent())[UNIT_PATH]
    assert "boot-complete" not in text and "RequiredBy" not in text
    assert unit.get("Service", "ImportCredential") == "ultraviolet.*"
    assert unit.get("Service", "DeviceAllow") == "/dev/tpmrm0 rw"
    assert unit.get("Service", "CapabilityBoundingSet") == ""
    assert unit.get("Service", "ExecStart").startswith("/usr/bin/python3 -I ")


def test_configuration_comes_from_the_policy() -> None:
    policy = _with_agent('pcrs = [4, 7, 11]\nbanks = ["sha256", "sha384"]\nreport_interval = 60\n')
    text = agent_files(policy)[CONFIG_PATH]
    assert json.loads(text) == {
        "verifier_url": URL,
        "pcrs": [4, 7, 11],
        "banks": ["sha256", "sha384"],
        "interval": 60,
    }
    config = parse_config(text)
    assert config == ServiceConfig(URL, (4, 7, 11), ("sha256", "sha384"), 60.0)


@pytest.mark.parametrize(
    ("field", "expected"),
    [('banks = ["md5"]', "banks"), ("report_interval = 1", "report_interval")],
)
def test_bad_attestation_fields_are_policy_errors(field: str, expected: str) -> None:
    from ultraviolet.errors import PolicyError

    with pytest.raises(PolicyError, match=expected):
        _with_agent(field + "\n")


def test_network_is_dhcp_on_wired_interfaces() -> None:
    network = parse_unit(agent_files(_with_agent())[NETWORK_PATH])
    assert network.get("Match", "Type") == "ether"
    assert network.get("Network", "DHCP") == "yes"


def test_render_adds_packages_preset_modules_and_compilation(tmp_path: Path) -> None:
    tree = render_tree(_with_agent(), tmp_path / "tree").directory
    conf = parse_unit((tree / "mkosi.conf").read_text())
    packages = conf.get_all("Content", "Packages")
    for package in ("python3", "python3-cryptography", "tpm2-tools", "systemd-resolved"):
        assert package in packages
    preset = (tree / "mkosi.extra" / PRESET).read_text().splitlines()
    for enabled in (AGENT_UNIT, "systemd-networkd.service", "systemd-resolved.service"):
        assert f"enable {enabled}" in preset
    copied = sorted(
        p.relative_to(tree / "mkosi.extra" / SITE_PACKAGES)
        for p in (tree / "mkosi.extra" / SITE_PACKAGES).rglob("*")
        if p.is_file()
    )
    assert copied == agent_modules()
    assert "compileall" in (tree / POSTINST).read_text()


def test_only_the_agents_modules_go_into_the_image() -> None:
    names = {str(p) for p in agent_modules()}
    assert "ultraviolet/node/service.py" in names and "ultraviolet/node/tpm.py" in names
    assert "ultraviolet/formats/tpm.py" in names
    for part in ("build", "attest", "cli", "policy", "testbed", "verify"):
        assert not any(name.startswith(f"ultraviolet/{part}/") for name in names), names


def test_the_credential_replaces_the_policys_url(tmp_path: Path) -> None:
    config = ServiceConfig(URL, (7,), ("sha256",), 300.0)
    assert verifier_url(config, {}) == URL
    assert verifier_url(config, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == URL
    (tmp_path / VERIFIER_CREDENTIAL).write_text("http://10.0.2.2:9000\n")
    assert verifier_url(config, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == (
        "http://10.0.2.2:9000"
    )
    (tmp_path / VERIFIER_CREDENTIAL).write_text("ftp://elsewhere\n")
    with pytest.raises(AttestationError, match="not an http"):
        verifier_url(config, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    with pytest.raises(AttestationError, match="no verifier"):
        verifier_url(ServiceConfig("", (7,), ("sha256",), 300.0), {})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[", "not JSON"),
        ("[]", "JSON object"),
        ('{"pcrs": []}', "pcrs"),
        ('{"pcrs": [24]}', "pcrs"),
        ('{"pcrs": [true]}', "pcrs"),
        ('{"pcrs": [7], "banks": ["md5"]}', "banks"),
        ('{"pcrs": [7], "interval": 0}', "interval"),
        ('{"pcrs": [7], "verifier_url": 5}', "verifier_url"),
    ],
)
def test_bad_configuration_is_a_clear_error(text: str, expected: str) -> None:
    with pytest.raises(AttestationError, match=expected):
        parse_config(text, "agent.json")


@pytest.mark.oracle
def test_systemd_accepts_the_unit(tools_chroot: ToolsChroot, tmp_path: Path) -> None:
    """systemd-analyze verify loads the unit (syntax, ExecStart, dependencies, sandboxing)."""
    unit_file = tmp_path / AGENT_UNIT
    unit_file.write_text(agent_files(_with_agent())[UNIT_PATH])
    result = tools_chroot.run(
        ["systemd-analyze", "verify", "--man=no", str(unit_file)], binds=[tmp_path], check=False
    )
    complaints = result.stderr.decode(errors="replace")
    assert result.returncode == 0, complaints
    assert "nknown" not in complaints, complaints


@pytest.mark.oracle
def test_debians_python_runs_the_copied_agent(tools_chroot: ToolsChroot, tmp_path: Path) -> None:
    """Debian trixie's python3 + python3-cryptography (the tools chroot has the image's
    versions) imports the service from the copied modules alone, isolated (-I, as the unit
    runs it), byte-compiles them as the postinst does, and reads the rendered configuration."""
    tree = render_tree(_with_agent(), tmp_path / "tree").directory
    site = tree / "mkosi.extra" / SITE_PACKAGES
    config = tree / "mkosi.extra" / CONFIG_PATH
    probe = (
        "import sys, json; sys.path.insert(0, sys.argv[1]);"
        "import ultraviolet.node.service as s;"
        "c = s.parse_config(open(sys.argv[2]).read());"
        "print(json.dumps([c.verifier_url, sorted(m for m in sys.modules "
        "if m.startswith('ultraviolet')), s.__file__]))"
    )
    result = tools_chroot.run(
        ["python3", "-I", "-B", "-c", probe, str(site), str(config)], binds=[tmp_path]
    )
    url, modules, location = json.loads(result.text)
    assert url == URL
    assert location.startswith(str(site))
    assert {m.replace(".", "/") for m in modules} <= {
        str(p.with_suffix("")).removesuffix("/__init__") for p in agent_modules()
    }
    compiled = tools_chroot.run(
        ["python3", "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash",
         str(site / "ultraviolet")],
        binds=[tmp_path],
    )  # fmt: skip
    assert compiled.returncode == 0
    assert list((site / "ultraviolet" / "node" / "__pycache__").glob("service.cpython-3*.pyc"))


@pytest.mark.oracle
def test_sysusers_makes_the_tss_group(tools_chroot: ToolsChroot, tmp_path: Path) -> None:
    """systemd-sysusers, on an empty root as a node's first boot has it, creates the tss user
    and group that /dev/tpmrm0 belongs to (the unit's SupplementaryGroups=tss)."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    conf = root / SYSUSERS_PATH
    conf.parent.mkdir(parents=True)
    conf.write_text(agent_files(_with_agent())[SYSUSERS_PATH])
    tools_chroot.run(["systemd-sysusers", f"--root={root}", str(conf)], binds=[tmp_path])
    groups = {line.split(":")[0] for line in (root / "etc/group").read_text().splitlines()}
    assert "tss" in groups
    unit = parse_unit(agent_files(_with_agent())[UNIT_PATH])
    assert unit.get("Service", "SupplementaryGroups") == "tss"

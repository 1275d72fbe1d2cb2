"""Shared fixtures. Oracle and build tiers need root (mount namespaces, the tools chroot)."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from ultraviolet.tools import ToolsChroot, tools

# The test command (CI) runs a fixed, reproducible set of examples so that what passed before a
# change passes in CI; interactive runs keep exploring new random examples.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("ULTRAVIOLET_HYPOTHESIS", "dev"))


@pytest.fixture(scope="session")
def tools_chroot() -> ToolsChroot:
    """The trixie tools chroot (created on demand). CI runs as root; elsewhere these tiers skip."""
    if os.geteuid() != 0:
        pytest.skip("the tools chroot needs root (CI runs as root)")
    return tools()

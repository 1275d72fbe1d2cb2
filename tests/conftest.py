"""Shared fixtures. Oracle and build tiers need root (mount namespaces, the tools chroot)."""

from __future__ import annotations

import os

import pytest

from ultraviolet.tools import ToolsChroot, tools


@pytest.fixture(scope="session")
def tools_chroot() -> ToolsChroot:
    """The trixie tools chroot (created on demand). CI runs as root; elsewhere these tiers skip."""
    if os.geteuid() != 0:
        pytest.skip("the tools chroot needs root (CI runs as root)")
    return tools()

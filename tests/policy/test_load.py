"""Node policy loading: defaults, typed model, and errors naming file, line and field."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ultraviolet.errors import PolicyError
from ultraviolet.policy import PolicyValidationError, load_policy, parse_policy
from ultraviolet.policy.explain import render_markdown
from ultraviolet.policy.load import field_problem
from ultraviolet.policy.model import SECTION_TYPES
from ultraviolet.policy.schema import FIELDS, SECTIONS, Field, fields_of

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "container-host.toml"
MINIMAL = '[image]\nname = "node"\nversion = "1.0"\n'


def _issues(text: str) -> list[str]:
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy(text, source="node.toml")
    return [str(issue) for issue in caught.value.issues]


def test_schema_and_model_agree() -> None:
    assert tuple(SECTION_TYPES) == SECTIONS
    for section, model in SECTION_TYPES.items():
        assert [f.name for f in dataclasses.fields(model)] == [f.name for f in fields_of(section)]


def test_minimal_policy_takes_defaults() -> None:
    policy = parse_policy(MINIMAL)
    assert policy.image.name == "node"
    assert policy.image.release == "trixie"
    assert policy.boot.tries == 3
    assert policy.boot.profiles == ("main", "ipe-enforce", "factory-reset")
    assert policy.integrity.ipe_mode == "enforce"
    assert policy.storage.usr_slot_size == 1 << 30
    assert policy.hostname == "node"


def test_example_policy_loads() -> None:
    policy = load_policy(EXAMPLE)
    assert policy.image.name == "container-host"
    assert "containerd" in policy.image.packages
    assert policy.source == str(EXAMPLE)
    assert len(policy.digest) == 64


def test_unknown_key_names_line_and_suggests() -> None:
    (issue,) = _issues(MINIMAL + 'packges = ["curl"]\n')
    assert issue.startswith("node.toml:4: image.packges: unknown key")
    assert "did you mean 'packages'" in issue


def test_unknown_section_suggests() -> None:
    (issue,) = _issues(MINIMAL + '[integrty]\nipe_mode = "off"\n')
    assert issue.startswith("node.toml:4: [integrty]: unknown section")
    assert "'integrity'" in issue


def test_bad_version_names_the_field() -> None:
    (issue,) = _issues('[image]\nname = "node"\nversion = "1.0 beta"\n')
    assert issue.startswith("node.toml:3: image.version: expected a version string")


def test_missing_required_field_says_what_to_add() -> None:
    (issue,) = _issues('[image]\nname = "node"\n')
    assert 'image.version: required; add e.g. version = "1.0.0"' in issue


def test_wrong_types_and_choices_are_all_reported() -> None:
    issues = _issues(
        MINIMAL + '[boot]\ntries = "three"\n[integrity]\nipe_mode = "strict"\n'
        '[storage]\nroot_min_size = "big"\n'
    )
    assert len(issues) == 3
    assert issues[0] == "node.toml:5: boot.tries: expected an integer, got 'three'"
    assert "one of 'enforce', 'audit', 'off'" in issues[1]
    assert "a size such as" in issues[2]


def test_range_and_pattern_checks() -> None:
    issues = _issues(
        MINIMAL + '[boot]\ntries = 99\nprofiles = ["ipe-enforce"]\n'
        '[integrity]\npinned_root_hashes = ["abc"]\n'
    )
    assert any("boot.tries: expected an integer from 1 to 16" in i for i in issues)
    assert any("boot.profiles: expected a list starting with 'main'" in i for i in issues)
    assert any("64 lowercase hex digits" in i for i in issues)


def test_toml_syntax_error_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match=r"node\.toml"):
        parse_policy("[image\nname=", source="node.toml")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.toml")


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.key)
def test_every_field_has_doc_and_valid_default(field: Field) -> None:
    assert field.doc.endswith(".")
    if not field.required:
        assert field_problem(field, field.default) is None


@given(st.text(max_size=300))
def test_random_text_gives_only_policy_errors(text: str) -> None:
    with contextlib.suppress(PolicyError):
        parse_policy(text)


def test_docs_policy_md_is_generated_from_the_schema() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "policy.md"
    assert docs.read_text() == render_markdown() + "\n", (
        "regenerate: uvctl policy explain --markdown"
    )

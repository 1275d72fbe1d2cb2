"""IPE policy text: render/parse round trips, validation, kernel-style signing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ultraviolet.build.keys import generate_signing_key
from ultraviolet.formats.ipe import IpeError, IpePolicy, IpeRule, parse_ipe, render_ipe, sign_ipe
from ultraviolet.formats.pkcs7 import parse_signed_data, verify_signed_data

POLICY = IpePolicy(
    name="uv_enforce",
    version=(1, 2, 3),
    default_action="ALLOW",
    op_defaults=(("EXECUTE", "DENY"),),
    rules=(
        IpeRule("EXECUTE", (("boot_verified", "TRUE"),), "ALLOW"),
        IpeRule("EXECUTE", (("dmverity_signature", "TRUE"),), "ALLOW"),
        IpeRule("EXECUTE", (("dmverity_roothash", "sha256:" + "ab" * 32),), "ALLOW"),
    ),
)
TEXT = """\
policy_name=uv_enforce policy_version=1.2.3
DEFAULT action=ALLOW
DEFAULT op=EXECUTE action=DENY
op=EXECUTE boot_verified=TRUE action=ALLOW
op=EXECUTE dmverity_signature=TRUE action=ALLOW
op=EXECUTE dmverity_roothash=sha256:{} action=ALLOW
""".format("ab" * 32)


def test_render_and_parse() -> None:
    assert render_ipe(POLICY) == TEXT
    assert parse_ipe(TEXT) == POLICY
    assert parse_ipe("# comment\n" + TEXT.replace("\n", "  # trailing\n", 1)) == POLICY
    assert POLICY.default_for("EXECUTE") == "DENY" and POLICY.default_for("KMODULE") == "ALLOW"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty policy"),
        ("policy_name=x\n", "policy_version"),
        ("policy_name=x policy_version=1.2.3\nop=EXECUTE action=ALLOW\n", "no global DEFAULT"),
        ("policy_name=x policy_version=1.2.3\nDEFAULT action=MAYBE\n", "invalid|unknown"),
        (
            "policy_name=x policy_version=1.2.3\nDEFAULT action=DENY\nop=EXEC action=ALLOW\n",
            "unknown operation",
        ),
        (
            "policy_name=x policy_version=1.2.3\nDEFAULT action=DENY\n"
            "op=EXECUTE dmverity_roothash=abc action=ALLOW\n",
            "invalid value",
        ),
        (
            "policy_name=x policy_version=1.2.3\nDEFAULT action=DENY\n"
            "op=EXECUTE colour=blue action=ALLOW\n",
            "unknown property",
        ),
        ("policy_name=x policy_version=99999.0.0\nDEFAULT action=DENY\n", "65535"),
    ],
)
def test_invalid_policies(text: str, message: str) -> None:
    with pytest.raises(IpeError, match=message):
        parse_ipe(text)


def test_signed_policy_embeds_text_without_attributes() -> None:
    keys = generate_signing_key("ipe")
    signed = parse_signed_data(sign_ipe(TEXT, keys.key, keys.certificate))
    assert signed.content == TEXT.encode()
    assert signed.signers[0].signed_attributes is None
    assert verify_signed_data(signed, [keys.certificate]).ok


@given(st.text(alphabet="abcdefTRUEFALSopx=._: \n#0123456789", max_size=200))
def test_random_text(text: str) -> None:
    with contextlib.suppress(IpeError):
        assert parse_ipe(render_ipe(parse_ipe(text))) == parse_ipe(text)

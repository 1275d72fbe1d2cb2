"""Reports: ok only when every error-severity check passed; JSON and text carry the same data."""

from __future__ import annotations

import json

from ultraviolet.verify.report import Report, Severity, failed, passed, skipped


def test_ok_when_all_pass() -> None:
    report = Report.of("img", [passed("gpt.header", "fine"), passed("verity.tree", "fine")])
    assert report.ok
    assert report.failures() == ()
    assert "Verdict: PASSED" in report.render_text()


def test_a_failed_error_fails_the_report() -> None:
    report = Report.of("img", [passed("gpt.header", "fine"), failed("verity.tree", "block 7")])
    assert not report.ok
    assert [r.check_id for r in report.failures()] == ["verity.tree"]
    assert "FAIL" in report.render_text()


def test_a_warning_does_not_fail_the_report() -> None:
    report = Report.of("img", [failed("gpt.types", "odd type", severity=Severity.WARNING)])
    assert report.ok
    assert "warn" in report.render_text()


def test_a_skipped_error_check_fails_the_report() -> None:
    assert not Report.of("img", [skipped("verity.tree", "no partitions")]).ok


def test_json_carries_ids_status_and_details() -> None:
    report = Report.of("img", [failed("verity.tree", "bad", "usr", first_bad_block=3)])
    data = json.loads(report.render_json())
    assert data == {
        "subject": "img",
        "ok": False,
        "results": [
            {
                "id": "verity.tree",
                "status": "fail",
                "severity": "error",
                "subject": "usr",
                "message": "bad",
                "details": {"first_bad_block": 3},
            }
        ],
    }

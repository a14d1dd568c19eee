"""Ledger entry validation and the packaged migrations (no database needed)."""

import pytest

from modelswarm.apps.console import ledger

GOOD = {
    "model": "iris",
    "from_version": "1.0.0",
    "to_version": "1.1.0",
    "image": "10.0.0.11:5000/models/iris:1.1.0",
    "image_digest": "sha256:" + "0f" * 32,
    "actor": "ci",
    "started_at": "2026-11-22T10:00:00Z",
    "finished_at": "2026-11-22T10:01:30+00:00",
    "result": "succeeded",
}


def test_good_entry_is_normalised():
    clean = ledger.validate(GOOD)
    assert clean["message"] == ""
    assert (clean["finished_at"] - clean["started_at"]).total_seconds() == 90
    assert clean["from_version"] == "1.0.0"


def test_first_deploy_has_no_from_version_and_no_digest():
    entry = {**GOOD, "from_version": None, "image_digest": None}
    assert ledger.validate(entry)["from_version"] is None


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"model": "Iris"}, "model", "lowercase"),
        ({"model": "x"}, "model", "2-40 characters"),
        ({"model": "a" * 41}, "model", "2-40 characters"),
        ({"to_version": ""}, "to_version", "non-empty"),
        ({"image": None}, "image", "required"),
        ({"image_digest": "md5:abc"}, "image_digest", "sha256:<64 hex digits>"),
        ({"result": "ok"}, "result", "one of succeeded, rolled_back, failed, no_op"),
        ({"started_at": "2026-11-22T10:00:00"}, "started_at", "needs a time zone"),
        ({"finished_at": "soon"}, "finished_at", "not an ISO 8601 timestamp"),
        ({"finished_at": "2026-11-22T09:00:00Z"}, "finished_at", "before started_at"),
        ({"colour": "blue"}, "body", "unknown field(s): colour"),
        ({"message": 7}, "message", "string or null"),
    ],
)
def test_each_bad_field_gets_its_own_message(change, field, message):
    with pytest.raises(ledger.InvalidEntry) as caught:
        ledger.validate({**GOOD, **change})
    assert set(caught.value.errors) == {field}
    assert message in caught.value.errors[field]


def test_non_object_is_refused():
    with pytest.raises(ledger.InvalidEntry, match="expected a JSON object"):
        ledger.validate(["not", "an", "object"])


def test_migrations_are_numbered_and_create_the_ledger():
    found = ledger.migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert "CREATE TABLE rollouts" in found[0].sql
    # The table's CHECKs repeat the validator's rules, so no other path can store what validate() refuses.
    for rule in ("'succeeded', 'rolled_back', 'failed', 'no_op'", "finished_at >= started_at", "sha256:"):
        assert rule in found[0].sql

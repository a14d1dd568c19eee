"""Idempotence is judged from the PLAY RECAP per host: changed=2 is a change too."""

import pytest

from modelswarm.tooling import recap

OUTPUT = """
TASK [platform : Report the platform services.] ***
ok: [node1]

PLAY RECAP *********************************************************************
node1                      : ok=97   changed=0    unreachable=0    failed=0    skipped=31   rescued=0    ignored=0
node2                      : ok=60   changed=2    unreachable=0    failed=0    skipped=29   rescued=0    ignored=0
\x1b[0;32mnode3\x1b[0m    : ok=60   changed=12   unreachable=0    failed=0    skipped=29   rescued=0    ignored=0

Monday 23 November 2026  14:06:36 +0000 (0:00:00.135)       0:03:16.097 *******
===============================================================================
docker : Install the Docker packages at the pinned version. ----------- 29.06s
"""


def test_every_host_is_read_with_its_counts():
    hosts = recap.parse(OUTPUT)
    assert sorted(hosts) == ["node1", "node2", "node3"]
    assert hosts["node1"] == {
        "ok": 97, "changed": 0, "unreachable": 0, "failed": 0, "skipped": 31, "rescued": 0, "ignored": 0,
    }  # fmt: skip


def test_changed_two_or_more_counts_as_changed():
    assert recap.changed_hosts(OUTPUT) == {"node2": 2, "node3": 12}


def test_a_clean_rerun_has_no_changed_host():
    clean = OUTPUT.replace("changed=2 ", "changed=0 ").replace("changed=12", "changed=0 ")
    assert recap.changed_hosts(clean) == {}


def test_the_last_recap_counts():
    first = OUTPUT.replace("changed=0 ", "changed=5 ")
    assert recap.changed_hosts(first + OUTPUT.replace("changed=2 ", "changed=0 ")) == {"node3": 12}


@pytest.mark.parametrize("output", ["", "TASK [x]\nfatal: [node1]: UNREACHABLE!", "PLAY RECAP ***\n\n"])
def test_an_unfinished_play_is_not_taken_for_a_clean_one(output):
    with pytest.raises(recap.RecapError):
        recap.parse(output)

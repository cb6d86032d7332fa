"""Two processes writing one space on one device (``anysyncfs put`` beside ``sync --watch``): each holds its own
:class:`Replica` of the same store. A write by one must not drop the other's change from the stored heads, or
the change is never picked up, announced or reconciled by heads (issue 13: the netns partition test)."""

from __future__ import annotations

from anysyncfs.core import keys
from anysyncfs.replica import Replica, adopt_space, create_space
from anysyncfs.replica.files import list_dir, put_file


def _another_process(first: Replica) -> Replica:
    home = first.unlocked.home
    return Replica(first.unlocked, home.store(), home.blobs(), first.space_id)


def _names(r: Replica) -> set[str]:
    return {e.name for e in list_dir(r.tree, "/")}


def test_a_commit_keeps_the_head_of_a_commit_made_by_another_process(make_home) -> None:
    watch = create_space(make_home("a"), "docs")
    put_file(watch, "/first.txt", b"first")  # the watch process has its change graph loaded
    put = _another_process(watch)
    other = put_file(put, "/from-put.txt", b"put").id  # the watch process has not picked it up
    own = put_file(watch, "/from-watch.txt", b"watch").id
    stored = set(watch.store.heads(watch.space_id))
    assert stored == {other, own} == set(watch.heads)
    assert _names(watch) == {"first.txt", "from-put.txt", "from-watch.txt"}
    assert _names(_another_process(watch)) == {"first.txt", "from-put.txt", "from-watch.txt"}  # the cached tree  # the cached tree too


def test_received_changes_keep_the_head_of_a_commit_made_by_another_process(make_home) -> None:
    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "docs")
    b_home = make_home("b", phrase)
    watch = adopt_space(b_home, "docs", a.header_raw, [raw for _rid, raw in a.acl_raws()])
    put_file(watch, "/first.txt", b"first")  # the watch process has its change graph loaded
    put = _another_process(watch)
    remote = put_file(a, "/remote.txt", b"from a").id
    local = put_file(put, "/local.txt", b"local").id  # committed beside the watch process
    results = watch.ingest_batch(a.get_changes([remote], 1 << 20))
    assert [r.status for r in results] == ["applied"]
    stored = set(watch.store.heads(watch.space_id))
    assert stored == {remote, local} == set(watch.heads)
    assert _names(watch) == {"first.txt", "remote.txt", "local.txt"}
    assert watch.pick_up_commits() is False  # nothing left to pick up: the heads already hold it

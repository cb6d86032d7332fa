"""What landed changes altered, as a mount needs it to invalidate the kernel's caches (issue 11 item 4).

The fold notes, while it applies changes that did not come through the mount, every shown name an edit takes away
(``TreeState.journal``); ``TreeDelta.gone`` keeps those that really went or now name another entry. Checked
against :func:`tree_delta`, the full comparison of the tree before and after, on random histories with concurrent
changes (conflict suffixes included), and end to end through two replicas and a Vfs.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from anysyncfs.core import keys, ops
from anysyncfs.core.ids import ROOT_NODE
from anysyncfs.core.tree import ChangeInfo, TreeDelta, TreeState, fold_order, tree_delta
from anysyncfs.fs.vfs import ROOT_INODE, Vfs
from anysyncfs.replica import Replica, adopt_space, create_space
from anysyncfs.replica.files import put_file
from anysyncfs.replica.home import Unlocked
from tests.unit.test_tree import BOB, Dag, create, mkdir, nid, rename, unlink, write
from tests.unit.test_vfs_support import ROOT


def apply_noted(state: TreeState, dag: Dag, info: ChangeInfo) -> tuple[TreeDelta, set[bytes]]:
    """Apply one change the way a replica applies a received one for a mount: with the journal on."""
    delta = TreeDelta()
    state.note_names(delta.names)
    try:
        touched = state.apply(info, dag.ops[info.id], dag.is_ancestor)
    finally:
        state.note_names(None)
    delta.nodes |= touched
    return delta, touched


def show_everything(state: TreeState) -> None:
    """Every directory listed, as a mount that looked at everything would have it (views cached)."""
    for node_id, node in state.nodes.items():
        if node.kind == ops.KIND_DIR:
            state.children(node_id)


def test_renamed_removed_and_replaced_names_are_gone_others_are_not() -> None:
    dag = Dag()
    docs = nid("d")
    base = dag.add([mkdir("d", b"docs"), create("a", b"a.txt", docs), create("b", b"b.txt", docs),
                    create("c", b"c.txt", docs), create("w", b"w.txt", docs), create("k", b"keep", docs),
                    create("t", b".c.txt.tmp", docs)])  # fmt: skip
    state = dag.fold()
    show_everything(state)
    # Remotely: a renamed, b removed, c replaced by an editor's rename-over, w rewritten in place, n created.
    info = dag.add([rename("ea", docs, b"a2.txt"), unlink("eb"), unlink("ec"), rename("et", docs, b"c.txt"),
                    write("w", b"new bytes"), create("n", b"new.txt", docs)], base)  # fmt: skip
    delta, touched = apply_noted(state, dag, info)
    assert sorted(delta.gone(state)) == [(docs, b".c.txt.tmp"), (docs, b"a.txt"), (docs, b"b.txt"), (docs, b"c.txt")]
    assert {nid("w"), nid("a"), nid("b"), nid("c"), nid("t"), nid("n"), docs} <= delta.nodes
    assert nid("k") not in delta.nodes and (docs, b"keep") not in delta.names  # untouched: nothing to drop
    # The full comparison agrees.
    before = dag.fold(base)
    full = tree_delta(before, state)
    assert sorted(full.names) == sorted(delta.gone(state))
    assert full.nodes <= touched


def test_a_name_that_still_shows_the_same_entry_is_not_gone() -> None:
    dag = Dag()
    base = dag.add([create("a", b"a.txt"), create("b", b"b.txt")])
    state = dag.fold()
    show_everything(state)
    # Renamed away and back within one change: the kernel's entry is still right.
    info = dag.add([rename("ea", ROOT_NODE, b"x"), rename("ea", ROOT_NODE, b"a.txt")], base)
    delta, _touched = apply_noted(state, dag, info)
    assert (ROOT_NODE, b"a.txt") in delta.names and delta.gone(state) == []


def test_a_revived_entry_that_takes_its_name_back_replaces_it() -> None:
    """x.txt was unlinked, and y created under the same name; a write to x that did not see the unlink arrives
    last and brings x's entry back with its original placement: the name now shows x, and y a conflict name."""
    dag = Dag()
    c1 = dag.add([create("x", b"same.txt")])
    c2 = dag.add([unlink("ex")], c1)
    c3 = dag.add([create("y", b"same.txt")], c2)
    d = c1
    for i in range(3):  # a branch that never saw the unlink, long enough to sort after c3
        d = dag.add([create(f"p{i}", b"pad%d" % i)], d, author=BOB)
    state = dag.fold(c1, c2, c3, *[i for i in dag.infos.values() if i.author == BOB])
    show_everything(state)
    assert state.lookup(ROOT_NODE, b"same.txt").node == nid("y")  # type: ignore[union-attr]
    c4 = dag.add([write("x", b"edited without seeing the unlink")], d, author=BOB)
    delta, _touched = apply_noted(state, dag, c4)
    assert state.lookup(ROOT_NODE, b"same.txt").node == nid("x")  # type: ignore[union-attr]
    assert delta.gone(state) == [(ROOT_NODE, b"same.txt")]


def random_history(seed: int, steps: int) -> Dag:
    """Random ops on a few names in a few folders, with concurrent branches by two authors (collisions, conflict
    suffixes, revived entries, conflict copies)."""
    rng = random.Random(seed)
    dag = Dag()
    dirs = [ROOT_NODE]
    nodes: list[str] = []
    entries: list[str] = []
    made: list[ChangeInfo] = [dag.add([mkdir("d0", b"d0")])]
    dirs.append(nid("d0"))
    names = [b"a", b"b", b"c.txt", b"d0x"]
    counter = 0
    for _ in range(steps):
        op_list: list[ops.Op] = []
        for _ in range(rng.randint(1, 4)):
            counter += 1
            kind = rng.random()
            if kind < 0.35 or not entries:
                label = f"n{counter}"
                is_dir = rng.random() < 0.2
                op_list.append(create(label, rng.choice(names), rng.choice(dirs),
                                      ops.KIND_DIR if is_dir else ops.KIND_FILE, mode=0o755 if is_dir else 0o644))
                nodes.append(label)
                entries.append("e" + label)
                if is_dir:
                    dirs.append(nid(label))
            elif kind < 0.55:
                op_list.append(rename(rng.choice(entries), rng.choice(dirs), rng.choice(names)))
            elif kind < 0.75:
                op_list.append(unlink(rng.choice(entries)))
            else:
                op_list.append(write(rng.choice(nodes), os.urandom(4)))
        parents = rng.sample(made, k=min(len(made), rng.randint(1, 2))) if rng.random() < 0.5 else made[-1:]
        made.append(dag.add(op_list, *parents, author=rng.choice([BOB, b"\xa1" * 32])))
    return dag


@pytest.mark.parametrize("seed", range(12))
def test_the_journal_finds_every_name_a_full_comparison_finds(seed: int) -> None:
    dag = random_history(seed, 40)
    ordered = sorted(dag.infos.values(), key=fold_order)
    state = TreeState()
    checked = 0
    for info in ordered:
        before = state.copy()
        show_everything(state)  # the mount looked at everything (cached views), or at nothing: both must work
        if checked % 2:
            state = state.copy()
        delta, touched = apply_noted(state, dag, info)
        full = tree_delta(before, state)
        found = set(delta.gone(state))
        # Every name shown before that went or names another entry now is found; anything more can only be a
        # name that appeared and changed again inside this change (conflict suffixes moving), never shown before.
        assert set(full.names) <= found, f"change {checked}"
        for parent, name in found - set(full.names):
            assert before.lookup(parent, name) is None, f"change {checked}"
        assert full.nodes <= touched, f"change {checked}"
        assert state.problems() == []
        checked += 1


def test_tree_delta_of_equal_folds_is_empty() -> None:
    dag = random_history(99, 20)
    assert not tree_delta(dag.fold(), dag.fold())


# ---------------------------------------------------------------------------------------------- replica and Vfs
def two_devices(make_home: Callable[..., Unlocked], tmp_path: Path) -> tuple[Replica, Replica, Vfs]:
    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "docs")
    b = adopt_space(make_home("b", phrase), "docs", a.header_raw, [raw for _rid, raw in a.acl_raws()])
    return a, b, Vfs(b, staging_dir=tmp_path / "staging-b")


def send(a: Replica, b: Replica, since: set[bytes]) -> None:
    new = [c for c in a.change_ids() if c not in since]
    results = b.ingest_batch(a.get_changes(new, 1 << 24))
    assert {r.status for r in results} == {"applied"}


def test_received_changes_land_with_their_names_and_inodes(make_home, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b, vfs = two_devices(make_home, tmp_path)
    for name in ("x.txt", "y.txt", "z.txt", "keep.txt"):
        put_file(a, f"/d/{name}", name.encode())
    send(a, b, set())
    vfs.take_landed()  # the first sync: the kernel knew nothing yet
    d = vfs.lookup(ROOT_INODE, b"d", ROOT).inode
    seen = {n: vfs.lookup(d, n, ROOT).inode for n in (b"x.txt", b"y.txt", b"z.txt", b"keep.txt")}
    assert vfs.take_landed() == ([], [])

    known = set(a.change_ids())
    sa = Vfs(a, staging_dir=tmp_path / "staging-a")
    ad = sa.lookup(ROOT_INODE, b"d", ROOT).inode
    sa.rename(ad, b"x.txt", ad, b"x2.txt", 0, ROOT)
    sa.unlink(ad, b"y.txt", ROOT)
    put_file(a, "/d/z.txt", b"rewritten")  # same node, new content
    sa.close()
    send(a, b, known)
    inodes, names = vfs.take_landed()
    assert sorted(names) == [(d, b"x.txt"), (d, b"y.txt")]
    assert {seen[b"x.txt"], seen[b"y.txt"], seen[b"z.txt"], d} <= set(inodes)
    assert seen[b"keep.txt"] not in inodes
    assert vfs.take_landed() == ([], [])  # taken once
    vfs.close()


def test_own_commits_land_nothing_other_processes_commits_do(make_home, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    unlocked = make_home("dev")
    replica = create_space(unlocked, "s")
    vfs = Vfs(replica, staging_dir=tmp_path / "staging")
    fh, f = vfs.create(ROOT_INODE, b"f", 0o644, os.O_WRONLY | os.O_CREAT, ROOT)
    vfs.write(fh, 0, b"v1")
    vfs.release(fh)
    vfs.rename(ROOT_INODE, b"f", ROOT_INODE, b"g", 0, ROOT)
    vfs.fsyncdir(0, False)  # committed through the Vfs: the kernel saw all of it
    assert vfs.take_landed() == ([], [])
    assert vfs.commits_elsewhere() is False and vfs.pick_up_commits() is False

    home = unlocked.home
    other = Replica(unlocked, home.store(), home.blobs(), replica.space_id)  # `anysyncfs put` beside the mount
    put_file(other, "/g", b"from another process")
    assert vfs.commits_elsewhere() is True
    assert vfs.pick_up_commits() is True
    inodes, names = vfs.take_landed()
    assert f.inode in inodes and names == []
    assert vfs.lookup(ROOT_INODE, b"g", ROOT).inode == f.inode
    vfs.close()


def test_a_change_that_arrives_out_of_order_lands_through_the_refold(make_home, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """B committed more (higher lamports) than A's rename that arrives later: the rename sorts before B's last
    change, so B refolds instead of applying it on top; the difference of the trees says what to invalidate."""
    a, b, vfs = two_devices(make_home, tmp_path)
    put_file(a, "/x.txt", b"x")
    send(a, b, set())
    vfs.take_landed()
    x = vfs.lookup(ROOT_INODE, b"x.txt", ROOT).inode
    known = set(a.change_ids())
    sa = Vfs(a, staging_dir=tmp_path / "staging-a")
    sa.rename(ROOT_INODE, b"x.txt", ROOT_INODE, b"y.txt", 0, ROOT)
    sa.close()
    for i in range(3):  # B's own work meanwhile, through its Vfs: the kernel saw it
        put_name = b"b%d.txt" % i
        fh, _attr = vfs.create(ROOT_INODE, put_name, 0o644, os.O_WRONLY | os.O_CREAT, ROOT)
        vfs.release(fh)
        vfs.fsyncdir(0, False)
    assert vfs.take_landed() == ([], [])
    refolds = 0
    fresh_fold = b.fresh_fold

    def counting(*args: object, **kw: object) -> TreeState:
        nonlocal refolds
        refolds += 1
        return fresh_fold(*args, **kw)  # type: ignore[arg-type]

    b.fresh_fold = counting  # type: ignore[method-assign]
    send(a, b, known)
    assert refolds == 1  # the out-of-order path, not the journal
    inodes, names = vfs.take_landed()
    assert names == [(ROOT_INODE, b"x.txt")] and x in inodes
    assert vfs.lookup(ROOT_INODE, b"y.txt", ROOT).inode == x

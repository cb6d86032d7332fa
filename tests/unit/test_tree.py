"""Unit tests for the file-tree CRDT (anysyncfs.core.tree): each op, each conflict rule, names, the fold vector."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from anysyncfs.core import crypto, ops
from anysyncfs.core.ids import ROOT_NODE
from anysyncfs.core.tree import (
    ChangeInfo,
    TreeState,
    conflict_copy_ids,
    conflict_name,
    fold,
    fold_order,
    original_name,
    split_name,
)

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "tree_fold.json"

ALICE = bytes([0xA1]) * 32  # ids.short(ALICE) == "ugq2dinb"
BOB = bytes([0xB0]) * 32  # "wcylbmfq"
WALL0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in microseconds


# ---------------------------------------------------------------------------------------------------- helpers
def nid(label: str) -> bytes:
    """A readable fixed 16-byte node or entry ID."""
    raw = label.encode()
    assert len(raw) <= 16
    return raw.ljust(16, b"_")


def content(data: bytes) -> ops.Content:
    return ops.Content(size=len(data), inline=data)


def create(node: str, name: bytes, parent: bytes = ROOT_NODE, kind: int = ops.KIND_FILE, *, entry: str = "",
           mode: int = 0o644, time_ns: int = 1_000, target: bytes = b"") -> ops.Create:  # fmt: skip
    return ops.Create(
        node=nid(node), entry=nid(entry or "e" + node), parent=parent, name=name, kind=kind, mode=mode, uid=1000,
        gid=1000, time_ns=time_ns, target=target,
    )  # fmt: skip


def mkdir(node: str, name: bytes, parent: bytes = ROOT_NODE) -> ops.Create:
    return create(node, name, parent, ops.KIND_DIR, mode=0o755)


def write(node: str, data: bytes, mtime_ns: int = 2_000) -> ops.Write:
    return ops.Write(node=nid(node), content=content(data), mtime_ns=mtime_ns)


def unlink(entry: str) -> ops.Unlink:
    return ops.Unlink(entry=nid(entry))


def rename(entry: str, parent: bytes, name: bytes) -> ops.Rename:
    return ops.Rename(entry=nid(entry), parent=parent, name=name)


class Dag:
    """Changes with parents. IDs grow with creation order, so equal lamports fold in creation order."""

    def __init__(self) -> None:
        self.infos: dict[bytes, ChangeInfo] = {}
        self.parents: dict[bytes, tuple[bytes, ...]] = {}
        self.ops: dict[bytes, list[ops.Op]] = {}
        self._ancestors: dict[bytes, frozenset[bytes]] = {}

    def add(self, op_list: Sequence[ops.Op], *parents: ChangeInfo, author: bytes = ALICE) -> ChangeInfo:
        number = len(self.infos) + 1
        change_id = number.to_bytes(4, "big") + bytes(28)
        lamport = 1 + max((p.lamport for p in parents), default=0)
        info = ChangeInfo(change_id, lamport, author, WALL0 + number * 1_000_000)
        self.infos[change_id] = info
        self.parents[change_id] = tuple(p.id for p in parents)
        self.ops[change_id] = list(op_list)
        return info

    def ancestors(self, change: bytes) -> frozenset[bytes]:
        found = self._ancestors.get(change)
        if found is None:
            acc: set[bytes] = set()
            for parent in self.parents[change]:
                acc |= {parent} | self.ancestors(parent)
            found = self._ancestors[change] = frozenset(acc)
        return found

    def is_ancestor(self, a: bytes, b: bytes) -> bool:
        return a in self.ancestors(b)

    def fold(self, *only: ChangeInfo) -> TreeState:
        """Fold every change, or only the given ones (which must include their ancestors)."""
        ordered = sorted(only or self.infos.values(), key=fold_order)
        state = fold(((info, self.ops[info.id]) for info in ordered), self.is_ancestor)
        assert state.problems() == []
        return state


def names(state: TreeState, parent: bytes = ROOT_NODE) -> list[bytes]:
    return list(state.children(parent))


def data_at(state: TreeState, path: bytes) -> bytes | None:
    node = state.resolve(path)
    return None if node is None else node.content.inline


# ---------------------------------------------------------------------------------------------------- basics
def test_empty_tree_has_the_root() -> None:
    state = TreeState()
    root = state.resolve(b"")
    assert root is not None and root.id == ROOT_NODE and root.kind == ops.KIND_DIR and root.mode == 0o755
    assert state.resolve(b"/") is root and state.node_path(ROOT_NODE) == b""
    assert state.children(ROOT_NODE) == {} and state.nlink(ROOT_NODE) == 2
    assert state.canonical() == TreeState().canonical()


def test_create_file_dir_symlink_and_paths() -> None:
    dag = Dag()
    c1 = dag.add([mkdir("d", b"docs"), create("f", b"a.txt", nid("d"), time_ns=77),
                  create("s", b"link", kind=ops.KIND_SYMLINK, mode=0o777, target=b"docs/a.txt")])  # fmt: skip
    state = dag.fold()
    assert names(state) == [b"docs", b"link"]
    f = state.resolve(b"docs/a.txt")
    assert f is not None and f.id == nid("f") and f.kind == ops.KIND_FILE and f.size == 0
    assert (f.atime_ns, f.mtime_ns, f.ctime_ns) == (77, 77, 77) and (f.uid, f.gid, f.mode) == (1000, 1000, 0o644)
    assert f.version == c1.id and f.author == ALICE
    link = state.resolve(b"link")
    assert link is not None and link.target == b"docs/a.txt" and link.kind == ops.KIND_SYMLINK
    assert state.node_path(nid("f")) == b"docs/a.txt"
    assert state.resolve(b"docs//a.txt") is f and state.resolve(b"docs/missing") is None
    assert state.resolve(b"docs/a.txt/x") is None  # a file has no children
    assert state.nlink(ROOT_NODE) == 3 and state.nlink(nid("d")) == 2 and state.nlink(nid("f")) == 1
    assert state.nodes[nid("d")].mtime_ns == 77  # creating inside a directory updates its mtime


@pytest.mark.parametrize("bad", [b".", b"..", b"a/b", b"nul\0", b"x" * 256])
def test_create_with_invalid_name_is_skipped(bad: bytes) -> None:
    state = TreeState()
    touched = state.apply(Dag().add([]), [create("f", bad)], lambda a, b: False)
    assert touched == set() and nid("f") not in state.nodes


def test_invalid_creates_are_skipped_without_raising() -> None:
    dag = Dag()
    dag.add([create("f", b"f"), mkdir("d", b"d")])
    dag.add([
        create("f", b"again"),  # node ID exists
        create("g", b"g", entry="ef"),  # entry ID exists
        create("h", b"h", parent=nid("f")),  # parent is a file
        create("i", b"i", parent=nid("nowhere")),  # parent unknown
        create("j", b"j", kind=ops.KIND_SYMLINK),  # symlink without a target
        create("k", b"k", kind=9),  # unknown kind
        create("l", b"l", mode=0o17777),  # mode out of range
        ops.Create(node=b"short", entry=nid("em"), parent=ROOT_NODE, name=b"m", kind=1, mode=0, uid=0, gid=0,
                   time_ns=0),  # a malformed node ID
        ops.Create(node=ROOT_NODE, entry=nid("er"), parent=ROOT_NODE, name=b"r", kind=2, mode=0o755, uid=0,
                   gid=0, time_ns=0),  # the root exists
    ])  # fmt: skip
    state = dag.fold()
    assert names(state) == [b"d", b"f"]
    assert set(state.nodes) == {ROOT_NODE, nid("f"), nid("d")}


def test_invalid_ops_on_unknown_things_are_skipped() -> None:
    dag = Dag()
    dag.add([create("f", b"f")])
    dag.add([
        write("nope", b"x"), ops.SetAttr(node=nid("nope"), mode=0o600), rename("enope", ROOT_NODE, b"x"),
        unlink("enope"), ops.Link(node=nid("nope"), entry=nid("l"), parent=ROOT_NODE, name=b"l"),
        rename("ef", nid("f"), b"x"),  # new parent is a file
        rename("ef", ROOT_NODE, b"a/b"),  # invalid name
    ])  # fmt: skip
    state = dag.fold()
    assert names(state) == [b"f"] and len(state.entries) == 1


def test_symlink_and_dir_writes_are_skipped() -> None:
    dag = Dag()
    dag.add([mkdir("d", b"d"), create("s", b"s", kind=ops.KIND_SYMLINK, target=b"t")])
    dag.add([write("d", b"x"), write("s", b"y")])
    state = dag.fold()
    assert state.nodes[nid("d")].content == ops.EMPTY and state.nodes[nid("s")].content == ops.EMPTY


# ---------------------------------------------------------------------------------------------------- writes
def test_sequential_writes_replace_content_without_conflict() -> None:
    dag = Dag()
    c1 = dag.add([create("f", b"f.txt")])
    c2 = dag.add([write("f", b"one", mtime_ns=5)], c1)
    c3 = dag.add([write("f", b"two", mtime_ns=6), write("f", b"three", mtime_ns=7)], c2)
    state = dag.fold()
    f = state.resolve(b"f.txt")
    assert f is not None and f.content.inline == b"three" and f.size == 5 and f.mtime_ns == f.ctime_ns == 7
    assert f.version == c3.id and names(state) == [b"f.txt"]


def test_concurrent_writes_keep_both_versions() -> None:
    dag = Dag()
    base = dag.add([create("f", b"report.txt")])
    dag.add([write("f", b"alice")], base, author=ALICE)  # change 2, 2026-01-01 00:00:02
    second = dag.add([write("f", b"bob")], base, author=BOB)  # change 3: later in fold order, wins
    state = dag.fold()
    copy_name = b"report.sync-conflict-20260101-000002-ugq2dinb.txt"
    assert names(state) == [copy_name, b"report.txt"]
    assert data_at(state, b"report.txt") == b"bob" and data_at(state, copy_name) == b"alice"
    copy_node, copy_entry = conflict_copy_ids(nid("f"), second.id)
    assert state.resolve(copy_name).id == copy_node and copy_entry in state.entries  # type: ignore[union-attr]
    assert copy_node == crypto.blake3(b"anysyncfs conflict node v1\x00" + nid("f") + second.id)[:16]
    assert state.nodes[nid("f")].version == second.id


def test_three_concurrent_writes_keep_all_versions() -> None:
    dag = Dag()
    base = dag.add([create("f", b"notes")])
    dag.add([write("f", b"1")], base, author=ALICE)
    dag.add([write("f", b"2")], base, author=BOB)
    dag.add([write("f", b"3")], base, author=ALICE)
    state = dag.fold()
    assert data_at(state, b"notes") == b"3"
    assert names(state) == [b"notes", b"notes.sync-conflict-20260101-000002-ugq2dinb",
                            b"notes.sync-conflict-20260101-000003-wcylbmfq"]  # fmt: skip
    assert data_at(state, names(state)[1]) == b"1" and data_at(state, names(state)[2]) == b"2"


def test_write_after_seeing_both_versions_is_not_a_conflict() -> None:
    dag = Dag()
    base = dag.add([create("f", b"f")])
    a = dag.add([write("f", b"a")], base)
    b = dag.add([write("f", b"b")], base, author=BOB)
    dag.add([write("f", b"merged")], a, b)
    state = dag.fold()
    assert data_at(state, b"f") == b"merged" and len(names(state)) == 2  # only the a/b conflict copy


def test_conflict_copy_is_an_ordinary_file() -> None:
    dag = Dag()
    base = dag.add([create("f", b"f.md")])
    a = dag.add([write("f", b"a")], base)
    b = dag.add([write("f", b"b")], base, author=BOB)
    copy_node, copy_entry = conflict_copy_ids(nid("f"), b.id)
    merged = dag.add([ops.Write(node=copy_node, content=content(b"edited copy"), mtime_ns=9)], a, b)
    state = dag.fold()
    copy_name = b"f.sync-conflict-20260101-000002-ugq2dinb.md"
    assert data_at(state, copy_name) == b"edited copy"
    dag.add([ops.Unlink(entry=copy_entry)], merged)
    state = dag.fold()
    assert names(state) == [b"f.md"] and copy_node in state.nodes  # history is kept, the name is gone


def test_a_conflict_copy_seen_by_one_replica_exists_in_every_later_fold() -> None:
    dag = Dag()
    base = dag.add([create("f", b"f")])
    first = dag.add([write("f", b"1")], base)  # lamport 2
    step = dag.add([], base, author=BOB)  # lamport 2
    second = dag.add([write("f", b"2")], first)  # lamport 3, sorts before `bob`
    bob = dag.add([write("f", b"bob")], step, author=BOB)  # lamport 3
    # Bob's replica has not seen `second`: there `bob` displaces "1", and Bob edits the copy it sees.
    partial = dag.fold(base, first, step, bob)
    copy_node, _ = conflict_copy_ids(nid("f"), bob.id)
    assert partial.nodes[copy_node].content.inline == b"1"
    edit = dag.add([ops.Write(node=copy_node, content=content(b"edited"), mtime_ns=9)], bob, first)
    # With everything, `bob` displaces "2" instead, under the same copy IDs, so Bob's edit still lands; the
    # edit, not having seen "2", moves it to a copy of its own.
    state = dag.fold()
    assert state.nodes[copy_node].content.inline == b"edited"
    shown = {state.nodes[e.node].content.inline for e in state.children(ROOT_NODE).values()}
    assert shown == {b"bob", b"edited", b"2"}
    assert conflict_copy_ids(copy_node, edit.id)[0] in state.nodes


def test_conflict_copy_goes_beside_the_oldest_name_of_a_hard_linked_file() -> None:
    dag = Dag()
    base = dag.add([mkdir("d", b"d"), create("f", b"orig.c")])
    linked = dag.add([ops.Link(node=nid("f"), entry=nid("l"), parent=nid("d"), name=b"alias.c")], base)
    dag.add([write("f", b"a")], linked)
    dag.add([write("f", b"b")], linked, author=BOB)
    state = dag.fold()
    assert names(state) == [b"d", b"orig.c", b"orig.sync-conflict-20260101-000003-ugq2dinb.c"]
    assert data_at(state, b"d/alias.c") == data_at(state, b"orig.c") == b"b"


# ---------------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    ("name", "stem", "ext"),
    [(b"a.txt", b"a", b"txt"), (b".bashrc", b".bashrc", b""), (b"Makefile", b"Makefile", b""),
     (b"a.tar.gz", b"a.tar", b"gz"), (b"trailing.", b"trailing.", b""), (b".config.yml", b".config", b"yml")],
)  # fmt: skip
def test_split_name(name: bytes, stem: bytes, ext: bytes) -> None:
    assert split_name(name) == (stem, ext)


def test_conflict_names() -> None:
    wall = WALL0 + (13 * 3600 + 4 * 60 + 5) * 1_000_000 + 999_999  # 13:04:05.999999 rounds down
    assert conflict_name(b"a.txt", wall, ALICE) == b"a.sync-conflict-20260101-130405-ugq2dinb.txt"
    assert conflict_name(b".bashrc", wall, BOB) == b".bashrc.sync-conflict-20260101-130405-wcylbmfq"
    assert conflict_name(b"README", wall, BOB) == b"README.sync-conflict-20260101-130405-wcylbmfq"
    assert conflict_name(b"a.tar.gz", wall, ALICE, 3) == b"a.tar.sync-conflict-20260101-130405-ugq2dinb-3.gz"
    assert conflict_name(b"x", -5, ALICE) == b"x.sync-conflict-19700101-000000-ugq2dinb"  # clamped
    assert conflict_name(b"x", 2**62, ALICE).startswith(b"x.sync-conflict-99991231-235959-")


def test_conflict_names_fit_name_max() -> None:
    long_name = b"n" * 250 + b".txt"
    made = conflict_name(long_name, WALL0, ALICE)
    assert len(made) == ops.NAME_MAX and made.endswith(b"-ugq2dinb.txt") and ops.valid_name(made)
    utf8 = ("é" * 125).encode() + b".txt"  # 250 bytes of two-byte characters
    made = conflict_name(utf8, WALL0, ALICE, 12)
    assert len(made) <= ops.NAME_MAX and made.split(b".sync-conflict-")[0].decode()  # no split character
    huge_ext = b"a." + b"e" * 240
    made = conflict_name(huge_ext, WALL0, ALICE)
    assert len(made) <= ops.NAME_MAX and made.endswith(b"-ugq2dinb") and ops.valid_name(made)


def test_same_name_collision_later_placement_gets_the_suffix() -> None:
    dag = Dag()
    base = dag.add([mkdir("d", b"d")])
    dag.add([create("a", b"x.txt", nid("d"))], base, author=ALICE)  # change 2
    dag.add([create("b", b"x.txt", nid("d"))], base, author=BOB)  # change 3, placed later
    state = dag.fold()
    suffixed = b"x.sync-conflict-20260101-000003-wcylbmfq.txt"
    assert names(state, nid("d")) == [suffixed, b"x.txt"]
    assert state.lookup(nid("d"), b"x.txt").node == nid("a")  # type: ignore[union-attr]
    entry_b = state.entries[nid("eb")]
    assert state.display_name(entry_b) == suffixed and entry_b.name == b"x.txt"
    assert state.node_path(nid("b")) == b"d/" + suffixed


def test_collision_disappears_when_the_winner_goes() -> None:
    dag = Dag()
    base = dag.add([])
    a = dag.add([create("a", b"x")], base)
    b = dag.add([create("b", b"x")], base, author=BOB)
    dag.add([unlink("ea")], a, b)
    state = dag.fold()
    assert names(state) == [b"x"] and state.resolve(b"x").id == nid("b")  # type: ignore[union-attr]


def test_suffix_collisions_get_counters() -> None:
    # Three concurrent creates of "x" by one author in one second: suffixes collide and get -2.
    state = TreeState()
    info = ChangeInfo(bytes(31) + b"\x01", 1, ALICE, WALL0)
    state.apply(info, [create("a", b"x"), create("b", b"x"), create("c", b"x"),
                       create("d", b"x.sync-conflict-20260101-000000-ugq2dinb-2")], lambda a, b: False)  # fmt: skip
    plain = b"x.sync-conflict-20260101-000000-ugq2dinb"
    shown = {name: entry.node for name, entry in state.children(ROOT_NODE).items()}
    assert shown == {b"x": nid("a"), plain: nid("b"), plain + b"-3": nid("c"), plain + b"-2": nid("d")}


def test_rename_into_a_taken_name_is_shown_suffixed() -> None:
    dag = Dag()
    base = dag.add([create("a", b"a"), create("b", b"b")])
    dag.add([rename("eb", ROOT_NODE, b"a")], base, author=BOB)
    state = dag.fold()
    assert names(state) == [b"a", b"a.sync-conflict-20260101-000002-wcylbmfq"]


# ---------------------------------------------------------------------------------------------------- links, attrs
def test_hard_links_and_nlink() -> None:
    dag = Dag()
    c1 = dag.add([mkdir("d", b"d"), create("f", b"f")])
    c2 = dag.add([ops.Link(node=nid("f"), entry=nid("l"), parent=nid("d"), name=b"g"),
                  ops.Link(node=nid("d"), entry=nid("l2"), parent=ROOT_NODE, name=b"dirlink")], c1)  # fmt: skip
    state = dag.fold()
    assert state.nlink(nid("f")) == 2 and state.resolve(b"dirlink") is None  # no hard links to directories
    assert state.resolve(b"d/g") is state.resolve(b"f")
    assert state.nodes[nid("f")].ctime_ns == (WALL0 + 2_000_000) * 1000
    c3 = dag.add([unlink("ef")], c2)
    state = dag.fold()
    assert state.nlink(nid("f")) == 1 and state.node_path(nid("f")) == b"d/g"
    dag.add([unlink("l")], c3)
    state = dag.fold()
    assert state.nlink(nid("f")) == 0 and state.node_path(nid("f")) is None and nid("f") in state.nodes
    assert state.live_entries(nid("f")) == [] and len(state.entries_of(nid("f"))) == 2


def test_set_attr_fields_and_xattrs() -> None:
    dag = Dag()
    c1 = dag.add([create("f", b"f")])
    c2 = dag.add([ops.SetAttr(node=nid("f"), mode=0o600, uid=7, atime_ns=11, mtime_ns=12,
                              xattrs_set={b"user.a": b"1", b"user.b": b"2"})], c1)  # fmt: skip
    dag.add([ops.SetAttr(node=nid("f"), gid=9, xattrs_set={b"user.c": b"3"}, xattrs_del=[b"user.a", b"user.zz"])],
            c2)  # fmt: skip
    f = dag.fold().nodes[nid("f")]
    assert (f.mode, f.uid, f.gid, f.atime_ns, f.mtime_ns) == (0o600, 7, 9, 11, 12)
    assert f.xattrs == {b"user.b": b"2", b"user.c": b"3"} and f.ctime_ns == (WALL0 + 3_000_000) * 1000


def test_concurrent_set_attr_is_last_writer_wins_in_fold_order() -> None:
    dag = Dag()
    base = dag.add([create("f", b"f")])
    dag.add([ops.SetAttr(node=nid("f"), mode=0o600, uid=1)], base)
    late = dag.add([ops.SetAttr(node=nid("f"), mode=0o640)], base, author=BOB)
    f = dag.fold().nodes[nid("f")]
    assert (f.mode, f.uid, f.version, f.author) == (0o640, 1, late.id, BOB)


# ---------------------------------------------------------------------------------------------------- renames
def test_rename_moves_and_renames() -> None:
    dag = Dag()
    c1 = dag.add([mkdir("d", b"d"), create("f", b"f")])
    dag.add([rename("ef", nid("d"), b"g")], c1)
    state = dag.fold()
    assert names(state) == [b"d"] and data_at(state, b"d/g") == b""
    assert state.entries[nid("ef")].order[0] == 2


def test_rename_of_a_directory_into_itself_or_below_is_skipped() -> None:
    dag = Dag()
    c1 = dag.add([mkdir("a", b"a"), mkdir("b", b"b", nid("a")), mkdir("c", b"c", nid("b"))])
    dag.add([rename("ea", nid("a"), b"self"), rename("ea", nid("c"), b"loop")], c1)
    state = dag.fold()
    assert state.node_path(nid("c")) == b"a/b/c" and names(state) == [b"a"]


def test_concurrent_crossing_renames_do_not_make_a_cycle() -> None:
    dag = Dag()
    base = dag.add([mkdir("a", b"a"), mkdir("b", b"b")])
    dag.add([rename("ea", nid("b"), b"a")], base)  # a -> b/a (applied first)
    dag.add([rename("eb", nid("a"), b"b")], base, author=BOB)  # b -> a/b would close a loop: skipped
    state = dag.fold()
    assert names(state) == [b"b"] and state.node_path(nid("a")) == b"b/a"


# ---------------------------------------------------------------------------------------------------- unlink rules
@pytest.mark.parametrize("unlink_first", [True, False])
def test_write_beats_concurrent_unlink_in_both_orders(unlink_first: bool) -> None:
    dag = Dag()
    base = dag.add([mkdir("d", b"d"), create("f", b"f", nid("d"))])
    if unlink_first:
        dag.add([unlink("ef"), unlink("ed")], base, author=BOB)  # also removes the directory
        dag.add([write("f", b"kept")], base)
    else:
        dag.add([write("f", b"kept")], base)
        dag.add([unlink("ef"), unlink("ed")], base, author=BOB)
    state = dag.fold()
    assert data_at(state, b"d/f") == b"kept" and state.entries[nid("ef")].live


def test_write_to_a_file_unlinked_before_it_does_not_resurrect() -> None:
    dag = Dag()
    base = dag.add([create("f", b"f")])
    gone = dag.add([unlink("ef")], base)
    dag.add([write("f", b"still open")], gone)  # a process writing to its open, unlinked file
    state = dag.fold()
    assert names(state) == [] and state.nodes[nid("f")].content.inline == b"still open"


def test_unlink_after_seeing_the_write_removes_the_file() -> None:
    dag = Dag()
    base = dag.add([create("f", b"f")])
    wrote = dag.add([write("f", b"x")], base)
    dag.add([unlink("ef")], wrote)
    assert names(dag.fold()) == []


@pytest.mark.parametrize("rmdir_first", [True, False])
def test_rmdir_loses_against_concurrent_create_inside(rmdir_first: bool) -> None:
    dag = Dag()
    base = dag.add([mkdir("d", b"d")])
    if rmdir_first:
        dag.add([unlink("ed")], base, author=BOB)
        dag.add([create("f", b"new", nid("d"))], base)
    else:
        dag.add([create("f", b"new", nid("d"))], base)
        dag.add([unlink("ed")], base, author=BOB)
    state = dag.fold()
    assert data_at(state, b"d/new") == b"" and state.entries[nid("ed")].live


def test_rmdir_of_an_empty_directory() -> None:
    dag = Dag()
    c1 = dag.add([mkdir("d", b"d"), create("f", b"f", nid("d"))])
    c2 = dag.add([unlink("ed")], c1)  # not empty: skipped
    assert names(dag.fold()) == [b"d"]
    dag.add([unlink("ef"), unlink("ed")], c2)
    state = dag.fold()
    assert names(state) == [] and state.nlink(nid("d")) == 0


def test_create_or_rename_into_a_removed_nested_directory_resurrects_the_chain() -> None:
    dag = Dag()
    base = dag.add([mkdir("a", b"a"), mkdir("b", b"b", nid("a")), create("f", b"f")])
    dag.add([unlink("eb"), unlink("ea")], base, author=BOB)
    dag.add([rename("ef", nid("b"), b"moved")], base)
    state = dag.fold()
    assert state.node_path(nid("f")) == b"a/b/moved"
    dag2 = Dag()
    base = dag2.add([mkdir("a", b"a"), mkdir("b", b"b", nid("a"))])
    dag2.add([unlink("eb"), unlink("ea")], base, author=BOB)
    dag2.add([create("g", b"g", nid("b"))], base)
    assert dag2.fold().node_path(nid("g")) == b"a/b/g"


def test_rename_concurrent_with_unlink_does_not_resurrect() -> None:
    dag = Dag()
    base = dag.add([create("f", b"f")])
    dag.add([unlink("ef")], base, author=BOB)
    dag.add([rename("ef", ROOT_NODE, b"g")], base)
    state = dag.fold()
    assert names(state) == [] and state.entries[nid("ef")].name == b"g"


# ---------------------------------------------------------------------------------------------------- state api
def test_apply_returns_touched_nodes() -> None:
    dag = Dag()
    c1 = dag.add([mkdir("d", b"d")])
    c2 = dag.add([create("f", b"f", nid("d"))], c1)
    state = TreeState()
    assert state.apply(c1, dag.ops[c1.id], dag.is_ancestor) == {ROOT_NODE, nid("d")}
    assert state.apply(c2, dag.ops[c2.id], dag.is_ancestor) == {nid("d"), nid("f")}
    c3 = dag.add([rename("ef", ROOT_NODE, b"f")], c2)
    assert state.apply(c3, dag.ops[c3.id], dag.is_ancestor) == {ROOT_NODE, nid("d"), nid("f")}


def test_copy_and_from_parts_are_independent_and_order_free() -> None:
    dag = Dag()
    base = dag.add([mkdir("d", b"d"), create("f", b"x", nid("d")), create("g", b"x", nid("d"))])
    first = dag.add([write("f", b"1")], base)
    second = dag.add([write("f", b"2")], base, author=BOB)
    state = TreeState()
    for info in (base, first):
        state.apply(info, dag.ops[info.id], dag.is_ancestor)
    clone = state.copy()
    nodes, entries = list(state.nodes.items()), list(state.entries.items())
    random.Random(7).shuffle(nodes)
    random.Random(8).shuffle(entries)
    rebuilt = TreeState.from_parts(dict(nodes), dict(entries))
    for target in (state, rebuilt):
        target.apply(second, dag.ops[second.id], dag.is_ancestor)
    assert rebuilt.canonical() == state.canonical() == dag.fold().canonical()
    assert clone.canonical() != state.canonical()  # the copy did not see the second write
    clone.nodes[nid("f")].xattrs[b"user.x"] = b"y"
    assert state.nodes[nid("f")].xattrs == {}


def test_fold_ignores_duplicate_changes_and_canonical_is_deterministic() -> None:
    dag = Dag()
    base = dag.add([create("f", b"f")])
    a = dag.add([write("f", b"a")], base)
    b = dag.add([write("f", b"b")], base, author=BOB)
    once = fold([(i, dag.ops[i.id]) for i in (base, a, b)], dag.is_ancestor)
    twice = fold([(i, dag.ops[i.id]) for i in (base, base, a, a, b, a)], dag.is_ancestor)
    assert once.canonical() == twice.canonical()
    changed = dag.fold()
    changed.nodes[nid("f")].mode = 0o600
    assert changed.canonical() != once.canonical()


def test_children_is_a_copy_sorted_by_name() -> None:
    dag = Dag()
    dag.add([create("b", b"b"), create("a", b"a"), mkdir("c", b"C")])
    state = dag.fold()
    listing = state.children(ROOT_NODE)
    assert list(listing) == [b"C", b"a", b"b"]
    listing.clear()
    assert len(state.children(ROOT_NODE)) == 3 and state.children(nid("a")) == {}


# ---------------------------------------------------------------------------------------------------- vector
def _vector_dag() -> Dag:
    """A fixed history touching every op and the main conflict rules (the test vector's inputs)."""
    dag = Dag()
    base = dag.add([mkdir("docs", b"docs"), create("plan", b"plan.md", nid("docs")), create("rc", b".bashrc"),
                    create("ln", b"latest", kind=ops.KIND_SYMLINK, mode=0o777, target=b"docs/plan.md")])  # fmt: skip
    alice = dag.add([write("plan", b"alice's plan", 3_000), create("tmp", b"scratch"),
                     ops.Link(node=nid("rc"), entry=nid("rc2"), parent=nid("docs"), name=b"rc"),
                     write("rc", b"alias ll='ls -l'", 3_500)], base)  # fmt: skip
    bob = dag.add([write("plan", b"bob's plan", 4_000), unlink("erc"), create("other", b"scratch"),
                   ops.SetAttr(node=nid("rc"), mode=0o600, xattrs_set={b"user.tag": b"blue"})], base,
                  author=BOB)  # fmt: skip
    dag.add([write("rc", b"export A=1", 5_000), rename("eln", nid("docs"), b"latest")], alice, bob)
    return dag


def _vector_changes(dag: Dag) -> list[dict[str, object]]:
    return [
        {"id": i.id.hex(), "parents": [p.hex() for p in dag.parents[i.id]], "lamport": i.lamport,
         "author": i.author.hex(), "wall_us": i.wall_us, "payload": ops.encode_payload(dag.ops[i.id]).hex()}
        for i in dag.infos.values()
    ]  # fmt: skip


def test_fold_vector() -> None:
    dag = _vector_dag()
    state = dag.fold()
    shown = state.children(ROOT_NODE)
    assert list(shown) == [b".bashrc", b"docs", b"scratch", b"scratch.sync-conflict-20260101-000003-wcylbmfq"]
    assert names(state, nid("docs")) == [b"latest", b"plan.md", b"plan.sync-conflict-20260101-000002-ugq2dinb.md",
                                         b"rc"]  # fmt: skip
    assert data_at(state, b".bashrc") == b"export A=1"  # bob's unlink lost against alice's concurrent write
    assert data_at(state, b"docs/plan.md") == b"bob's plan"
    canonical = state.canonical()
    computed = {
        "description": "file-tree fold: changes folded in (lamport, id) order; canonical() of the result",
        "changes": _vector_changes(dag),
        "canonical": canonical.hex(),
        "canonical_blake3": crypto.blake3(canonical).hex(),
        "visible_paths": sorted(path.decode() for path in map(state.node_path, state.nodes) if path is not None),
    }  # fmt: skip
    if os.environ.get("ANYSYNCFS_WRITE_VECTORS") == "1":
        VECTORS.write_text(json.dumps(computed, indent=2) + "\n")
        return
    stored = json.loads(VECTORS.read_text())
    assert stored == computed
    # Recompute from the stored bytes alone: decode each payload and fold in (lamport, id) order.
    parents = {bytes.fromhex(c["id"]): {bytes.fromhex(p) for p in c["parents"]} for c in stored["changes"]}

    def is_ancestor(a: bytes, b: bytes) -> bool:
        frontier, seen = list(parents[b]), set()
        while frontier:
            c = frontier.pop()
            if c == a:
                return True
            if c not in seen:
                seen.add(c)
                frontier.extend(parents[c])
        return False

    infos = [(ChangeInfo(bytes.fromhex(c["id"]), c["lamport"], bytes.fromhex(c["author"]), c["wall_us"]),
              ops.decode_payload(bytes.fromhex(c["payload"]))) for c in stored["changes"]]  # fmt: skip
    infos.sort(key=lambda pair: fold_order(pair[0]))
    refolded = fold(infos, is_ancestor)
    assert refolded.canonical().hex() == stored["canonical"]
    assert crypto.blake3(refolded.canonical()).hex() == stored["canonical_blake3"]


# ------------------------------------------------------------------------------- conflict names (issue 16)
@pytest.mark.parametrize(("name", "original"), [
    (b"a.sync-conflict-20260101-130405-ugq2dinb.txt", b"a.txt"),
    (b"a.tar.sync-conflict-20260101-130405-ugq2dinb-2.gz", b"a.tar.gz"),
    (b"README.sync-conflict-20260101-130405-wcylbmfq", b"README"),
    (b".bashrc.sync-conflict-20260101-130405-wcylbmfq", b".bashrc"),
    (b"live.sync-conflict-20260101-130405-nf6dh3b2.sync-conflict-20260101-130406-nf6dh3b2-2.txt", b"live.txt"),
    (b"a.sync-conflict-notadate.txt", b"a.sync-conflict-notadate.txt"),  # not a tail conflict_name makes
    (b".sync-conflict-20260101-130405-ugq2dinb", b".sync-conflict-20260101-130405-ugq2dinb"),  # no stem
    (b"plain.txt", b"plain.txt"),
])  # fmt: skip
def test_original_name_strips_what_conflict_names_add(name: bytes, original: bytes) -> None:
    assert original_name(name) == original
    assert conflict_name(name, WALL0, BOB) == conflict_name(original, WALL0, BOB)


def test_identical_concurrent_writes_make_no_conflict_copy() -> None:
    dag = Dag()
    base = dag.add([create("f", b"f.txt")])
    dag.add([write("f", b"same")], base, author=ALICE)
    dag.add([write("f", b"same")], base, author=BOB)
    state = dag.fold()
    assert names(state) == [b"f.txt"] and data_at(state, b"f.txt") == b"same"


def test_identical_copy_comes_back_when_a_replica_that_saw_it_differ_edits_it() -> None:
    # Replica R saw {base, c (z), b (x)}: b displaced c, a visible copy named by b. It edits that copy. Another
    # replica also has a (x), which sorts between c and b: there b displaces a's identical x -> the copy named by
    # b holds x with no live name. R's edit (which never saw a) must still show up.
    dag = Dag()
    base = dag.add([create("f", b"f.txt")])
    c = dag.add([write("f", b"z")], base, author=ALICE)  # change 2
    dag.add([write("f", b"x")], base, author=ALICE)  # change 3 (a): same lamport as b, sorts before it
    b = dag.add([write("f", b"x")], base, author=BOB)  # change 4
    seen_by_r = dag.fold(base, c, b)
    copy_node, _ = conflict_copy_ids(nid("f"), b.id)
    assert seen_by_r.nodes[copy_node].content.inline == b"z" and len(names(seen_by_r)) == 2
    everything = dag.fold()
    assert everything.nodes[copy_node].content.inline == b"x"
    assert names(everything) == [b"f.sync-conflict-20260101-000002-ugq2dinb.txt", b"f.txt"]  # c's copy only
    dag.add([ops.Write(node=copy_node, content=content(b"edited"), mtime_ns=9)], c, b)
    state = dag.fold()
    shown = {name: state.resolve(name).content.inline for name in names(state)}  # type: ignore[union-attr]
    assert b"edited" in shown.values() and shown[b"f.txt"] == b"x"


def test_conflict_of_a_conflict_copy_is_named_from_the_original() -> None:
    dag = Dag()
    base = dag.add([create("f", b"live.txt")])
    a = dag.add([write("f", b"a")], base)
    b = dag.add([write("f", b"b")], base, author=BOB)
    copy_node, _ = conflict_copy_ids(nid("f"), b.id)
    copy_name = b"live.sync-conflict-20260101-000002-ugq2dinb.txt"
    assert data_at(dag.fold(), copy_name) == b"a"
    # Both devices edit the copy concurrently: the copy of the copy is named from live.txt.
    dag.add([ops.Write(node=copy_node, content=content(b"a2"), mtime_ns=9)], a, b)  # change 4
    dag.add([ops.Write(node=copy_node, content=content(b"b2"), mtime_ns=9)], a, b, author=BOB)  # change 5
    state = dag.fold()
    assert names(state) == [copy_name, b"live.sync-conflict-20260101-000004-ugq2dinb.txt", b"live.txt"]
    assert all(name.count(b".sync-conflict-") <= 1 for name in names(state))


def test_colliding_conflict_copy_names_are_never_doubled() -> None:
    # Two entries that carry the same conflict name (copied or renamed so): the later one is named from the
    # original, with a counter when its own conflict name is taken.
    state = TreeState()
    info = ChangeInfo(bytes(31) + b"\x01", 1, ALICE, WALL0)
    taken = b"x.sync-conflict-20260101-000000-ugq2dinb.txt"
    state.apply(info, [create("a", taken), create("b", taken)], lambda a, b: False)
    assert set(names(state)) == {taken, b"x.sync-conflict-20260101-000000-ugq2dinb-2.txt"}

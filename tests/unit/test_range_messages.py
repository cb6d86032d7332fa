"""GetBlobRanges / BlobSlice (protocol.md 70.12): byte vectors, strict bounds, and the window plan of a fetch."""

from __future__ import annotations

import pytest

from anysyncfs.core import bao
from anysyncfs.errors import ProtocolError
from anysyncfs.net.range_fetch import WINDOW_GROUPS, next_window
from anysyncfs.protocol import messages as m

G = bao.GROUP_LEN


def test_message_vectors() -> None:
    request = m.encode(m.Request(5, m.GetBlobRanges(b"a" * 32, b"b" * 32, [(16384, 4096)])))
    assert request.hex() == "920594" + "46" + "c420" + "61" * 32 + "c420" + "62" * 32 + "9192cd4000cd1000"
    reply = m.encode(m.Response(5, m.BlobSlice(bytes(8))))
    assert reply.hex() == "920592ccaac408" + "00" * 8
    assert m.decode(request, m.Request).body == m.GetBlobRanges(b"a" * 32, b"b" * 32, [(16384, 4096)])


@pytest.mark.parametrize("ranges", [[], [(0, 0)], [(-1, 5)], [(0, 1)] * (m.MAX_RANGES + 1),
                                    [(m.MAX_BLOB_LEN + 1, 1)]])
def test_out_of_bounds_ranges_do_not_decode(ranges: list[tuple[int, int]]) -> None:
    raw = m.encode(m.Request(1, _unchecked(ranges)))
    with pytest.raises(ProtocolError):
        m.decode(raw, m.Request)


def _unchecked(ranges: list[tuple[int, int]]) -> m.GetBlobRanges:
    return m.GetBlobRanges(b"a" * 32, b"b" * 32, ranges)  # msgspec checks bounds on decoding only


def test_windows_of_a_whole_blob_fetch() -> None:
    assert next_window(None, set()) == [(0, WINDOW_GROUPS * G)]
    length = 3 * WINDOW_GROUPS * G + 10
    assert next_window(length, set()) == [(0, WINDOW_GROUPS * G)]
    assert next_window(length, set(range(WINDOW_GROUPS)) | {3 * WINDOW_GROUPS}) == [(WINDOW_GROUPS * G,
                                                                                       WINDOW_GROUPS * G)]
    assert next_window(length, set(range(3 * WINDOW_GROUPS - 1)) | {3 * WINDOW_GROUPS}) == [
        ((3 * WINDOW_GROUPS - 1) * G, G)]
    assert next_window(length, set(range(3 * WINDOW_GROUPS + 1))) is None
    assert next_window(0, set()) == [(0, 1)] and next_window(0, {0}) is None
    assert next_window(100, set()) == [(0, 100)]

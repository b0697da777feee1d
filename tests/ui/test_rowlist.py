"""The row list's reads: pages of rows by id, never the rows between a sparse page's ids."""

from __future__ import annotations

from array import array

from rich.text import Text

from qixtui.ui.data import IdIndex
from qixtui.ui.rowlist import RowList


def test_a_sparse_page_reads_each_run_of_nearby_ids() -> None:
    reads: list[tuple[int, int]] = []

    def fetch(first: int, last: int) -> dict[int, tuple[int]]:
        reads.append((first, last))
        return {i: (i,) for i in range(first, last + 1)}

    rows = RowList(fetch, lambda row, width: Text(str(row)))
    rows.index = IdIndex(array("q", [1, 2, 3, 10, 500, 510, 900_000]))
    assert rows.row(4) == (500,)
    assert rows.row(6) == (900_000,)
    assert reads == [(1, 10), (500, 510), (900_000, 900_000)]  # one page, three reads

"""The SDK walks a paged list (consents, evaluations) to its end, and refuses a gateway whose next
page would never end the walk."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from veilgate.citizen import _every_page
from veilgate.errors import InternalError

_PageOf = Callable[[str | None], tuple[list[int], str]]


def _pages(pages: dict[str | None, tuple[list[int], str]]) -> tuple[list[str | None], _PageOf]:
    asked: list[str | None] = []

    def page_of(page: str | None) -> tuple[list[int], str]:
        asked.append(page)
        if len(asked) > 10:  # a walk that never ends fails here instead of hanging the test
            raise AssertionError("walked too far")
        return pages[page]

    return asked, page_of


def test_every_page_is_walked_in_order_from_the_newest() -> None:
    asked, page_of = _pages({None: ([5, 4], "p1"), "p1": ([3, 2], "p2"), "p2": ([1], "")})
    assert _every_page(page_of, "rows") == [5, 4, 3, 2, 1]
    assert asked == [None, "p1", "p2"]


def test_a_single_page_and_an_empty_list() -> None:
    assert _every_page(_pages({None: ([1], "")})[1], "rows") == [1]
    assert _every_page(_pages({None: ([], "")})[1], "rows") == []


@pytest.mark.parametrize(
    "pages",
    [
        {None: ([2], "p1"), "p1": ([1], "p1")},  # the same page named again
        {None: ([2], "p1"), "p1": ([], "p2"), "p2": ([1], "")},  # an empty page that is not the last
    ],
)
def test_a_next_page_that_does_not_move_on_is_refused(pages: dict[str | None, tuple[list[int], str]]) -> None:
    with pytest.raises(InternalError, match="the gateway's next page of consents does not move on"):
        _every_page(_pages(pages)[1], "consents")

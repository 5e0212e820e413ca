"""Identification through one pgvector gallery with the server's shared buffers on small and on huge pages.

The machine's speed drifts between windows by more than the difference, so the two are timed alternately in one
window: the embedded server is restarted with ``huge_pages`` off, then on, ``rounds`` times, and after each start
the probes run once untimed (their pages come into the buffers) and then ``passes`` times timed. Huge pages must be
reserved on the host; a server that did not get them stops the comparison, naming the reservation it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from pdsn.errors import PdsnError
from pdsn.runtime.gallery.embedded_server import restart_embedded_server

PAGE_SETTINGS = {"small": "off", "huge": "try"}  # "try", not "on": a refused start would leave no server to reset


class NoHugePagesError(PdsnError):
    """The comparison asked for huge pages the host has not reserved."""


def compare_pages(
    location: str,
    folder: Path,
    rec,
    ef_search: int,
    rounds: int,
    timed_pass: Callable[[object], dict],
    passes: int = 4,
) -> dict:
    """Per page size, each timed pass's p50 / p99 ms at ``ef_search``; ``timed_pass(gallery)`` is one pass of the
    probes, timed."""
    from pdsn.runtime.gallery import Gallery

    passes_by_pages: dict[str, list[dict]] = {"small": [], "huge": []}
    try:
        for _ in range(rounds):
            for pages, setting in PAGE_SETTINGS.items():
                restart_embedded_server(folder, {"huge_pages": setting})
                with Gallery.open(location, rec, create=False, ef_search=ef_search) as gallery:
                    _check_pages(gallery, pages)
                    timed_pass(gallery)
                    passes_by_pages[pages] += [timed_pass(gallery) for _ in range(passes)]
    finally:
        restart_embedded_server(folder, {"huge_pages": None})
    return {"ef_search": ef_search, "rounds": rounds, "passes": passes, **passes_by_pages}


def _check_pages(gallery, pages: str) -> None:
    status = gallery._store.setting("huge_pages_status")
    if (status == "on") != (pages == "huge"):
        needed = gallery._store.setting("shared_memory_size_in_huge_pages")
        raise NoHugePagesError(
            f"--compare-pages: the server's shared buffers are not on {pages} pages (huge_pages_status {status}); "
            f"reserve {needed} huge pages first (as root: sysctl -w vm.nr_hugepages={needed}), or leave "
            "--compare-pages out"
        )


def pages_lines(comparison: dict, goal_p99_ms: float) -> list[str]:
    """The comparison in the report's words, with how many passes had p99 over ``goal_p99_ms``."""

    def spread(pages: str) -> tuple[str, float]:
        p99 = [p["p99_ms"] for p in comparison[pages]]
        p50 = float(np.mean([p["p50_ms"] for p in comparison[pages]]))
        return f"p99 {min(p99):.1f} to {max(p99):.1f} ms (p50 {p50:.1f} ms on average)", p50

    small, small_p50 = spread("small")
    huge, huge_p50 = spread("huge")
    over = {pages: sum(p["p99_ms"] > goal_p99_ms for p in comparison[pages]) for pages in ("small", "huge")}
    return [
        f"Small against huge pages, in one window (ef_search {comparison['ef_search']}; the server restarted with "
        f"huge_pages off, then on, in each of {comparison['rounds']} rounds; after each start one untimed pass of the "
        f"probes, then {comparison['passes']} timed): small pages {small}; huge pages {huge}. p50 on huge pages is "
        f"{huge_p50 / small_p50:.2f} of that on small; passes with p99 over {goal_p99_ms:.0f} ms: "
        f"{over['small']} of {len(comparison['small'])} on small pages, {over['huge']} of {len(comparison['huge'])} "
        "on huge."
    ]

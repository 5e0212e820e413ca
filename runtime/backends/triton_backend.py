"""Triton backend: the bundle's model served by a Triton Inference Server, over gRPC or HTTP.

The server holds the model and its mask dictionary (a repository from ``pdsn triton-repo``); this
backend sends the validated batch and returns the server's answer. At construction it checks that
the server is live and ready, that the model is ready, that its inputs and outputs are the
contract's (``check_model_io``; the dictionary is the server's, never an input), and that the
config's ``pdsn_model_sha256`` / ``pdsn_dictionary_sha256`` name this bundle's variant and
dictionary. ``role="features"`` talks to ``<model_name>_features``.

A failed call (server down, connection reset, timeout) raises ``TritonUnavailableError`` naming
the URL and model, which fails that batch's requests only; the next call makes a new connection,
so the same backend works again once the server is back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from pdsn.errors import PdsnError
from pdsn.model.bundle_format import (
    EMBEDDING_OUTPUT,
    FEATURES_OUTPUT,
    IMAGE_INPUT,
    OCCLUSION_INPUT,
    BundleIntegrityError,
    ModelContract,
    sha256_file,
)
from pdsn.runtime.backends.base import Backend, BackendUnavailableError
from pdsn.runtime.model_io import TensorSpec, check_model_io, check_role

PROTOCOLS = ("grpc", "http")
DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}
FEATURES_SUFFIX = "_features"
INSTALL_HINT = 'the triton backend needs tritonclient: pip install "tritonclient[http,grpc]"'
_TRITON_DTYPES = {"UINT8": "uint8", "FP32": "float32", "FP16": "float16", "INT32": "int32"}
_NUMPY_TO_TRITON = {v: k for k, v in _TRITON_DTYPES.items()}
# gRPC statuses of a server that is down, restarting or too slow (not of a request it refused).
_TRANSPORT_STATUSES = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"}


class TritonUnavailableError(BackendUnavailableError):
    """The Triton server could not be reached or did not answer."""


class TritonInferenceError(PdsnError, RuntimeError):
    """The Triton server answered with an error (e.g. the model failed on the request)."""


class TritonBackend(Backend):
    """One model of a Triton server; ``model_path`` is the bundle's file the server's model was made from."""

    name = "triton"

    def __init__(
        self,
        model_path: str,
        dictionary: np.ndarray,
        contract: ModelContract,
        device: str = "cpu",
        url: str | None = None,
        protocol: str = "grpc",
        model_name: str = "pdsn",
        role: str = "embedding",
        timeout_s: float = 30.0,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} is not one of {PROTOCOLS}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self._embeds = check_role(role) == "embedding"
        self._module = _client_module(protocol)
        self._protocol, self._timeout = protocol, float(timeout_s)
        self._url = url or DEFAULT_URLS[protocol]
        self._model = model_name if self._embeds else model_name + FEATURES_SUFFIX
        self._output = EMBEDDING_OUTPUT if self._embeds else FEATURES_OUTPUT
        self._device, self._model_path = device, str(model_path)
        self._client = None
        config = self._check_server()
        metadata = self._call("read the model's metadata", lambda c: c.get_model_metadata(self._model, **self._json))
        # The server binds the dictionary (embedded or in the pdsn runtime): it is never a request input.
        served = dataclasses.replace(contract, dictionary_binding="embedded")
        check_model_io(
            served,
            _specs(metadata["inputs"]),
            _specs(metadata["outputs"]),
            f"Triton model {self._model!r} at {self._url}",
            role,
        )
        self._check_identity(config, dictionary)
        self.max_batch = int(config.get("max_batch_size", 0))
        # tritonclient.http's connections belong to the thread that made them (gevent): the batcher's
        # worker makes its own at the first call.
        self._drop()

    @property
    def _json(self) -> dict:
        return {"as_json": True} if self._protocol == "grpc" else {}

    def _connect(self):
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def _new_client(self):
        try:
            if self._protocol == "grpc":
                return self._module.InferenceServerClient(self._url)
            return self._module.InferenceServerClient(
                self._url, connection_timeout=self._timeout, network_timeout=self._timeout
            )
        except Exception as exc:  # e.g. a malformed URL
            raise TritonUnavailableError(
                f"cannot make a {self._protocol} client for the Triton server at {self._url}: {exc}"
            ) from exc

    def _call(self, what: str, call):
        """``call(client)``. The server unreachable: the connection is dropped (the next call makes a new
        one) and TritonUnavailableError is raised; the server's refusal: TritonInferenceError."""
        from tritonclient.utils import InferenceServerException

        client = self._connect()
        try:
            return call(client)
        except InferenceServerException as exc:
            if str(exc.status() or "").removeprefix("StatusCode.") not in _TRANSPORT_STATUSES:
                raise TritonInferenceError(
                    f"Triton model {self._model!r} at {self._url} ({self._protocol}) refused to {what}: {_message(exc)}"
                ) from exc
            failure, cause = exc, _message(exc)
        except Exception as exc:  # the transport's own errors: refused or reset connections, timeouts
            failure, cause = exc, f"{type(exc).__name__}: {exc}"
        self._drop()
        raise TritonUnavailableError(
            f"Triton server at {self._url} ({self._protocol}) failed to {what} for model {self._model!r}: {cause}; "
            f"is the server running with this model loaded?"
        ) from failure

    def _check_server(self) -> dict:
        problems = [
            ("is not live", lambda c: c.is_server_live()),
            ("is not ready", lambda c: c.is_server_ready()),
        ]
        for problem, check in problems:
            if not self._call("answer a health check", check):
                raise TritonUnavailableError(f"the Triton server at {self._url} ({self._protocol}) {problem}")
        if not self._call("report model readiness", lambda c: c.is_model_ready(self._model)):
            listing = self._call("list its models", lambda c: c.get_model_repository_index(**self._json))
            models = listing.get("models", []) if isinstance(listing, dict) else listing
            ready = sorted(m["name"] for m in models if m.get("state") == "READY")
            raise TritonUnavailableError(
                f"the Triton server at {self._url} has no ready model {self._model!r} (ready: "
                f"{', '.join(ready) or 'none'}); write one with `pdsn triton-repo` and start the server on that "
                f"repository, or pass model_name= one of those"
            )
        config = self._call("read the model's config", lambda c: c.get_model_config(self._model, **self._json))
        return config.get("config", config)

    def _check_identity(self, config: dict, dictionary: np.ndarray) -> None:
        """The server's model must be made from this bundle's file and dictionary (when its config says)."""
        parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        problems = []
        recorded = parameters.get("pdsn_model_sha256")
        if recorded and recorded != sha256_file(self._model_path):
            problems.append(
                f"it was made from a file with SHA-256 {recorded[:16]}... ({parameters.get('pdsn_precision', '?')}), "
                f"not from {Path(self._model_path).name} of this bundle"
            )
        recorded = parameters.get("pdsn_dictionary_sha256")
        if recorded:
            digest = hashlib.sha256(np.ascontiguousarray(dictionary, dtype=np.float32).tobytes()).hexdigest()
            if recorded != digest:
                problems.append("it binds another mask dictionary than this bundle's")
        if problems:
            raise BundleIntegrityError(
                f"Triton model {self._model!r} at {self._url} does not serve this bundle: {'; '.join(problems)}. "
                f"Open the bundle (and precision={parameters.get('pdsn_precision', '?')!r}) the repository was "
                f"written from, or rewrite the repository with `pdsn triton-repo --bundle BUNDLE`"
            )

    def infer(self, images: np.ndarray, occlusion: np.ndarray) -> np.ndarray:
        if self._module is None:
            raise RuntimeError("the triton backend was closed")
        inputs = self._inputs(images, occlusion)
        outputs = [self._module.InferRequestedOutput(self._output)]
        if self._protocol == "grpc":
            result = self._call(
                "run inference", lambda c: c.infer(self._model, inputs, outputs=outputs, client_timeout=self._timeout)
            )
        else:
            result = self._call("run inference", lambda c: c.infer(self._model, inputs, outputs=outputs))
        out = result.as_numpy(self._output)
        if out is None:
            raise TritonUnavailableError(
                f"Triton model {self._model!r} at {self._url} answered without its {self._output!r} output"
            )
        return out if self._embeds else out.reshape(len(out), -1)

    def _inputs(self, images: np.ndarray, occlusion: np.ndarray) -> list:
        arrays = {IMAGE_INPUT: images}
        if self._embeds:
            arrays[OCCLUSION_INPUT] = occlusion
        inputs = []
        for name, array in arrays.items():
            array = np.ascontiguousarray(array)
            tensor = self._module.InferInput(name, list(array.shape), _NUMPY_TO_TRITON[array.dtype.name])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    def direct_call(self, images: np.ndarray, occlusion: np.ndarray):
        """tritonclient's own ``infer`` on inputs prepared once, on a connection of the calling thread."""
        inputs = self._inputs(images, occlusion)
        outputs = [self._module.InferRequestedOutput(self._output)]
        client, model = self._new_client(), self._model
        return lambda: client.infer(model, inputs, outputs=outputs)

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "url": self._url,
            "protocol": self._protocol,
            "model": self._model,
            "max_batch_size": getattr(self, "max_batch", None),
            "device": f"remote ({self._device} requested)",
            "source": self._model_path,
        }

    def close(self) -> None:
        self._drop()
        self._module = None

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # Closing a connection that already failed may raise again; it is gone either way.
            with contextlib.suppress(Exception):
                client.close()


def _client_module(protocol: str):
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as exc:
        raise BackendUnavailableError(f"{INSTALL_HINT} (protocol={protocol!r}: {exc})") from exc
    return module


def _specs(tensors: list[dict]) -> list[TensorSpec]:
    """Triton metadata tensors as TensorSpecs: -1 is a dynamic dimension (gRPC's JSON gives strings)."""
    return [
        TensorSpec(
            t["name"],
            _TRITON_DTYPES.get(t["datatype"], t["datatype"]),
            tuple(None if int(d) < 0 else int(d) for d in t["shape"]),
        )
        for t in tensors
    ]


def _message(exc: Exception) -> str:
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)
    return text or type(exc).__name__

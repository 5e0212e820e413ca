"""The ``model.py`` that ``pdsn triton-repo --kind python`` copies into a repository: ``pdsn.runtime`` inside Triton.

Triton's python backend imports this file in its stub process (which provides
``triton_python_backend_utils``); it is not imported by pdsn itself. Parameters come from the
model's ``config.pbtxt``: ``bundle`` (relative to the version folder), ``precision``, ``backend``,
``device``, ``max_batch`` and ``pdsn_role`` (``embedding``: image, occlusion -> embedding;
``features``: image -> the trunk's feature map).

One ``execute`` runs every request Triton's dynamic batcher handed it as one Recognizer call:
the batcher has already waited for the batch to fill, so the faces go to the backend together
(one ONNX Runtime run per ``max_batch`` faces) and the Recognizer's own batcher adds no wait
(``max_delay_ms=0``). A failed call fails each request of the batch with the error's text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from pdsn.model.bundle_format import EMBEDDING_OUTPUT, FEATURES_OUTPUT, IMAGE_INPUT, OCCLUSION_INPUT
from pdsn.runtime import Recognizer


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        version_folder = Path(args["model_repository"]) / args["model_version"]
        self.role = parameters["pdsn_role"]
        self.recognizer = Recognizer.open(
            (version_folder / parameters["bundle"]).resolve(),
            backend=parameters["backend"],
            device=parameters["device"],
            precision=parameters["pdsn_precision"],
            max_batch=int(parameters["max_batch"]),
            max_delay_ms=0.0,
            verify=True,
        )

    def execute(self, requests: list) -> list:
        images = [pb_utils.get_input_tensor_by_name(r, IMAGE_INPUT).as_numpy() for r in requests]
        batch = np.concatenate(images)
        try:
            if self.role == "features":
                flat = self.recognizer.features(batch)
                result, output = flat.reshape(len(flat), *self.recognizer.contract.feature_shape), FEATURES_OUTPUT
            else:
                occlusion = np.concatenate(
                    [pb_utils.get_input_tensor_by_name(r, OCCLUSION_INPUT).as_numpy() for r in requests]
                )
                result, output = self.recognizer.embed(batch, occlusion=occlusion), EMBEDDING_OUTPUT
        except Exception as exc:
            error = pb_utils.TritonError(f"pdsn {self.role} model: {type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for part in images:
            rows = result[start : start + len(part)]
            start += len(part)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(output, rows)]))
        return responses

    def finalize(self) -> None:
        self.recognizer.close()

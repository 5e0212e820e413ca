"""The ``model.py`` that ``pdsn triton-repo --kind python`` copies into a repository: ``pdsn.runtime`` inside Triton.

Triton's python backend imports this file in its stub process (which provides
``triton_python_backend_utils``); it is not imported by pdsn itself. Parameters come from the
model's ``config.pbtxt``: ``bundle`` (relative to the version folder), ``precision``, ``backend``,
``device``, ``max_batch`` and ``pdsn_role`` (``embedding``: image, occlusion -> embedding;
``features``: image -> the trunk's feature map; ``faces``: an encoded photo and the smallest face side
-> each face's box, score, landmarks and embedding, one request at a time).

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
from pdsn.runtime import Recognizer, decode_image
from pdsn.runtime.photos import DetectionSettings, FaceCountError
from pdsn.triton_repo.configs import BOXES_OUTPUT, LANDMARKS_OUTPUT, MIN_FACE_INPUT, PHOTO_INPUT, SCORES_OUTPUT


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
        if self.role == "faces":
            return [self._faces(request) for request in requests]
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

    def _faces(self, request) -> object:
        """Detect, align and embed every face of one photo; a bad photo fails this request alone."""
        photo = pb_utils.get_input_tensor_by_name(request, PHOTO_INPUT).as_numpy().reshape(-1)
        min_face = pb_utils.get_input_tensor_by_name(request, MIN_FACE_INPUT).as_numpy().reshape(-1)
        try:
            image = decode_image(bytes(photo[0]))
            located = self.recognizer.locate(image, detection=DetectionSettings(min_face=float(min_face[0])))
            embeddings = self.recognizer.embed(located.batch)
            faces = [source.face for source in located.sources or []]
        except FaceCountError as exc:  # no face in the photo: zero rows, not an error
            if exc.found:
                raise
            faces, embeddings = [], np.zeros((0, self.recognizer.contract.embedding_size), np.float32)
        except Exception as exc:
            error = pb_utils.TritonError(f"pdsn faces model: {type(exc).__name__}: {exc}")
            return pb_utils.InferenceResponse(output_tensors=[], error=error)
        outputs = {
            BOXES_OUTPUT: np.array([f.box for f in faces], np.float32).reshape(-1, 4),
            SCORES_OUTPUT: np.array([f.score for f in faces], np.float32),
            LANDMARKS_OUTPUT: np.array([f.landmarks for f in faces], np.float32).reshape(-1, 5, 2),
            EMBEDDING_OUTPUT: np.asarray(embeddings, np.float32),
        }
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in outputs.items()])

    def finalize(self) -> None:
        self.recognizer.close()

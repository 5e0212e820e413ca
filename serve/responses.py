"""The face API's answers (the OpenAPI docs show these; the routes build them, so the two cannot drift).

A route's whole answer is ``<Operation>Response`` (``IdentifyResponse``, ``ErrorResponse``); its parts are named
for what they are (``Face``, ``Match``, ``IdentifiedFace``).
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class _ModelResponse(BaseModel):
    model: str = Field(description="the model that answered: name@sha256-prefix of its variant file")
    precision: str = Field(description="the variant that answered: fp32, fp16 or int8")
    model_note: str | None = Field(
        None, description="set when the model was trained on synthetic faces only: its scores do not tell people apart"
    )


class Face(BaseModel):
    """A face the detector found in a photo."""

    image: int = Field(description="which of the request's images (0 for a single image)")
    box: list[float] = Field(description="x1, y1, x2, y2 in the photo's pixels")
    score: float = Field(description="the detector's face probability")
    landmarks: list[list[float]] = Field(
        description="5 (x, y) points: left eye, right eye, nose tip, left and right mouth corners"
    )


class DetectResponse(_ModelResponse):
    faces: list[Face] = Field(description="every face of at least min_face pixels, highest score first")
    width: int
    height: int


class EmbedResponse(_ModelResponse):
    embeddings: list[list[float]] = Field(description="one per face: per aligned crop, or per face found in a photo")
    occluded_cells: list[list[int] | None] = Field(description="per embedding, the cells that masked it")
    faces: list[Face | None] | None = Field(
        None,
        description="per embedding, where its face was found (null when every image was an aligned crop; a null "
        "entry for an aligned crop sent beside photos)",
    )


class VerifyResponse(_ModelResponse):
    score: float = Field(description="cosine similarity, both faces masked by the union of their cells")
    match: bool | None = Field(
        description="score >= threshold (the request's, else the bundle's decision threshold); null without either"
    )
    threshold: float | None = Field(None, description="the threshold that decided match")
    occluded_cells: list[int] = Field(description="the union of both faces' cells, which masked both")
    face_a: Face | None = Field(None, description="the face compared, when image_a was a photo")
    face_b: Face | None = Field(None, description="the face compared, when image_b was a photo")


class Match(BaseModel):
    identity: str
    score: float
    face_id: int
    occluded_cells: list[int] = Field(description="the union of the probe's and this face's cells")
    exact: bool = Field(description="false: compared under a stored pattern covering the union")


class IdentifiedFace(Face):
    matches: list[Match]
    occluded_cells: list[int] = Field(description="this face's own cells")


class IdentifyResponse(_ModelResponse):
    matches: list[Match] | None = Field(description="for an aligned crop; null for a photo (see faces)")
    occluded_cells: list[int] | None = Field(description="the probe's own cells (aligned crop)")
    faces: list[IdentifiedFace] | None = Field(
        None, description="for a photo: every face found, each with its matches (null for an aligned crop)"
    )


class EnrollResponse(_ModelResponse):
    identity: str
    face_ids: list[int]
    occluded_cells: list[list[int]]
    faces: list[Face | None] | None = Field(
        None, description="per enrolled face, where it was found in its photo (null entries: aligned crops)"
    )


class IdentitiesResponse(BaseModel):
    identities: list[str]
    total: int
    offset: int
    limit: int


class IdentityResponse(BaseModel):
    identity: str
    metadata: dict


class RemoveResponse(BaseModel):
    identity: str
    removed: bool
    total: int


class ErrorResponse(BaseModel):
    error: str
    request_id: str
    field: str | None = None

"""The face API's answers (the OpenAPI docs show these; the routes build them, so the two cannot drift)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class _Answer(BaseModel):
    model: str = Field(description="the model that answered: name@sha256-prefix of its variant file")
    precision: str = Field(description="the variant that answered: fp32, fp16 or int8")


class EmbedResponse(_Answer):
    embeddings: list[list[float]]
    occluded_cells: list[list[int] | None] = Field(
        description="per image, the cells that masked its embedding (null: chosen by the occlusion estimator)"
    )


class VerifyResponse(_Answer):
    score: float = Field(description="cosine similarity, both faces masked by the union of their cells")
    match: bool | None = Field(description="score >= threshold; null without a threshold")
    occluded_cells: list[int] = Field(description="the union of both faces' cells, which masked both")


class MatchAnswer(BaseModel):
    identity: str
    score: float
    face_id: int
    occluded_cells: list[int] = Field(description="the union of the probe's and this face's cells")
    exact: bool = Field(description="false: compared under a stored pattern covering the union")


class IdentifyResponse(_Answer):
    matches: list[MatchAnswer]
    occluded_cells: list[int] = Field(description="the probe's own cells")


class EnrollResponse(_Answer):
    identity: str
    face_ids: list[int]
    occluded_cells: list[list[int]]


class IdentityList(BaseModel):
    identities: list[str]
    total: int
    offset: int
    limit: int


class IdentityAnswer(BaseModel):
    identity: str
    metadata: dict


class Removed(BaseModel):
    identity: str
    removed: bool
    total: int


class ErrorAnswer(BaseModel):
    error: str
    request_id: str
    field: str | None = None

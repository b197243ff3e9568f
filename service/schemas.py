"""Request and response bodies (JSON). Multipart forms carry the same fields as form parts."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbedImagesRequest(_Strict):
    images: list[str] = Field(..., min_length=1, description="base64 strings or data: URIs (data:image/png;base64,...)",
                              examples=[["iVBORw0KGgo..."]])


class EmbedTextsRequest(_Strict):
    texts: list[str] = Field(..., min_length=1, description="texts to embed; over-long ones are truncated",
                             examples=[["a photo of a cat", "a red circle"]])


class ClassifyRequest(_Strict):
    images: Optional[list[str]] = Field(None, description="base64 strings or data: URIs")
    image: Optional[str] = Field(None, description="one base64 string or data: URI (instead of images)")
    labels: Optional[list[str]] = Field(None, description="candidate labels, e.g. ['red circle', 'blue square']")
    labelset: Optional[str] = Field(None, description="name of a label set stored with PUT /labelsets/{name}")
    templates: Optional[Union[list[str], str]] = Field(
        None, description="prompt templates containing '{}', or a built-in set: 'openai_imagenet', 'simple'; "
                          "default 'a photo of a {}.'")
    top_k: Optional[int] = Field(None, ge=1, description="return only the k best labels per image")
    scores: Literal["probability", "cosine"] = Field(
        "probability", description="'probability': the model's own label probabilities (its `activation`: softmax "
                                   "over the labels, or for sigmoid-loss models such as SigLIP one sigmoid per "
                                   "label); 'cosine': the raw cosine similarity of image and label, for thresholds")


class LabelSetRequest(_Strict):
    labels: list[str] = Field(..., min_length=1)
    templates: Optional[Union[list[str], str]] = None


class EmbeddingsResponse(BaseModel):
    model: str
    fingerprint: str
    dimensions: int
    embeddings: list[list[float]]


class LabelScore(BaseModel):
    label: str
    score: float = Field(..., description="a probability, or the cosine similarity when the request asked for "
                                          "`scores: cosine`")


class ClassifyResponse(BaseModel):
    model: str
    fingerprint: str
    activation: Literal["softmax", "sigmoid"] = Field(
        ..., description="the model's activation: 'softmax' over the labels (CLIP: an image's probabilities sum to "
                         "1) or 'sigmoid' per label (SigLIP: each label on its own, multi-label)")
    scores: Literal["probability", "cosine"] = Field(..., description="what `score` is, as the request asked")
    results: list[list[LabelScore]]


class LabelSetInfo(BaseModel):
    name: str
    labels: list[str]
    templates: list[str]
    fingerprint: str


class InfoResponse(BaseModel):
    model: str
    fingerprint: str
    dimensions: int
    backend: str
    device: str
    precision: str
    context_length: int
    activation: Literal["softmax", "sigmoid"] = Field(..., description="how /classify turns cosines into "
                                                                        "probabilities")
    logit_scale: float
    logit_bias: Optional[float] = Field(None, description="sigmoid models: sigmoid(logit_scale x cosine + "
                                                          "logit_bias); null for softmax models")
    image_size: list[int]
    preprocess: dict
    batching: dict
    limits: dict
    template_sets: list[str]
    ready: bool


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


# --- OpenAPI: the error answers every API route may give, and the bodies our routes parse themselves ----------
ERROR_RESPONSES: dict[Union[int, str], dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": d}
    for code, d in {400: "undecodable input", 401: "missing or wrong API key", 413: "too large",
                    415: "unsupported media type", 422: "invalid fields",
                    503: "overloaded, not ready or shutting down (see Retry-After)"}.items()
}


def body_doc(json_schema_ref: str, multipart: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """openapi_extra describing a JSON body and, optionally, its multipart/form-data twin."""
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{json_schema_ref}"}}}
    if multipart:
        content["multipart/form-data"] = {"schema": {"type": "object", "properties": multipart}}
    return {"requestBody": {"required": True, "content": content}}


# --- OpenAI-compatible API (/v1) ---------------------------------------------------------------------------
class OpenAIEmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request. Unknown fields are ignored: OpenAI clients add optional ones over time."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(..., description="the served model id, its fingerprint, or the alias 'clip'",
                       examples=["clip"])
    input: Union[str, list[str], list[int], list[list[int]]] = Field(
        ..., description="a string or a list of strings: plain strings are texts; data:image/...;base64,... URIs "
                         "(and http(s) image URLs when URL fetching is enabled) are images. Token arrays are "
                         "refused: this server tokenises with the model's own tokenizer",
        examples=[["a red circle", "data:image/png;base64,iVBORw0KGgo..."]])
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="'base64': each embedding is the base64 of its little-endian float32 bytes")
    dimensions: Optional[int] = Field(None, ge=1, description="keep the first N values and renormalise "
                                                              "(CLIP is not trained for this; quality drops)")
    user: Optional[str] = Field(None, description="accepted and ignored")


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]

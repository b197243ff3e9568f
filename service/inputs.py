"""Each route's whole input, parsed and checked before any model work: one function per route, one typed value
back. JSON and multipart alike; image strings decoded (and image URLs fetched) here, label sets looked up and
validated here, so a route goes parse -> one engine call -> answer.

Limits are checked as early as the body allows: counts of JSON images before any is decoded, labels x templates
before any prompt is built. Each parse notes the request's item count for the access log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from starlette.requests import Request

from models.zeroshot import ScoreKind
from service.backends import Backend
from service.bodies import (content_type, images_from_strings, int_field, is_url, read_json, read_multipart,
                            single_field, validate)
from service.errors import InvalidField, ModelNotFound, UnsupportedMedia
from service.labelset_store import LabelSet, LabelSets, check_name, define
from service.limits import check_count
from service.request_scope import note_items, until_done_or_gone
from service.schemas import (ClassifyRequest, EmbedImagesRequest, EmbedTextsRequest, LabelSetRequest,
                             OpenAIEmbeddingsRequest)
from service.settings import Settings

MODEL_ALIASES = ("clip",)  # what tools configured for "a CLIP model" may send, besides the id and fingerprint
_HTTP_URL = re.compile(r"^https?://\S+$", re.I)
_JSON_OR_FORM = "use multipart/form-data or application/json"


@dataclass(frozen=True)
class ImageInputs:
    images: list[bytes]  # encoded image files, in request order


@dataclass(frozen=True)
class TextInputs:
    texts: list[str]


@dataclass(frozen=True)
class ClassifyInputs:
    images: list[bytes]
    labelset: LabelSet  # the request's own labels and templates, or a stored set's
    top_k: Optional[int]
    scores: ScoreKind = "probability"  # the model's probabilities, or the raw cosines


@dataclass(frozen=True)
class OpenAIEmbeddingsInputs:
    items: list[Union[str, bytes]]  # `input` in order: texts as str, images as the bytes of their files
    dimensions: Optional[int]
    encoding_format: str


# --- our API ------------------------------------------------------------------------------------------------------
async def parse_embed_images(request: Request, s: Settings) -> ImageInputs:
    """POST /embed/image: multipart `file` parts, or JSON `images` (base64, data: URIs, URLs when allowed)."""
    ctype = content_type(request)
    if ctype == "multipart/form-data":
        images = (await read_multipart(request, max_files=s.max_images_per_request, max_fields=0)).images
    elif ctype in ("application/json", ""):
        body = await read_json(request, EmbedImagesRequest)
        check_count("images", len(body.images), s.max_images_per_request, "CLIP_MAX_IMAGES_PER_REQUEST")
        images = await _image_bytes(request, body.images)
    else:
        raise UnsupportedMedia(f"content type {ctype!r} not supported; {_JSON_OR_FORM}")
    check_count("images", len(images), s.max_images_per_request, "CLIP_MAX_IMAGES_PER_REQUEST")
    note_items(request, len(images))
    return ImageInputs(images)


async def parse_embed_texts(request: Request, s: Settings) -> TextInputs:
    """POST /embed/text: JSON `texts`."""
    if content_type(request) not in ("application/json", ""):
        raise UnsupportedMedia("send application/json: {\"texts\": [...]}")
    body = await read_json(request, EmbedTextsRequest)
    check_count("texts", len(body.texts), s.max_texts_per_request, "CLIP_MAX_TEXTS_PER_REQUEST")
    note_items(request, len(body.texts))
    return TextInputs(body.texts)


async def parse_classify(request: Request, s: Settings, store: LabelSets) -> ClassifyInputs:
    """POST /classify: images as for /embed/image (or JSON `image`), and `labels` + `templates` or a stored
    `labelset`. The images are checked first, then the labels."""
    ctype = content_type(request)
    if ctype == "multipart/form-data":
        form = await read_multipart(request, max_files=s.max_images_per_request, max_fields=s.max_labels + 200)
        templates = form.fields.get("templates")
        body = validate(ClassifyRequest, dict(
            labels=form.fields.get("labels"), labelset=single_field(form.fields, "labelset"),
            templates=templates[0] if templates and len(templates) == 1 and "{}" not in templates[0] else templates,
            top_k=int_field(form.fields, "top_k"), **_given(scores=single_field(form.fields, "scores"))))
        images = form.images
    elif ctype in ("application/json", ""):
        body = await read_json(request, ClassifyRequest)
        if body.images is not None and body.image is not None:
            raise InvalidField("give either `images` or `image`, not both")
        strings = body.images if body.images is not None else ([body.image] if body.image is not None else [])
        check_count("images", len(strings), s.max_images_per_request, "CLIP_MAX_IMAGES_PER_REQUEST")
        images = await _image_bytes(request, strings)
    else:
        raise UnsupportedMedia(f"content type {ctype!r} not supported; {_JSON_OR_FORM}")
    check_count("images", len(images), s.max_images_per_request, "CLIP_MAX_IMAGES_PER_REQUEST")
    note_items(request, len(images))
    return ClassifyInputs(images, await _classify_labelset(body, s, store), body.top_k, body.scores)


def _given(**fields: Optional[str]) -> dict[str, str]:
    """The form fields a request sent: an absent one takes the request model's default."""
    return {k: v for k, v in fields.items() if v is not None}


async def _classify_labelset(body: ClassifyRequest, s: Settings, store: LabelSets) -> LabelSet:
    if body.labelset is not None:
        if body.labels is not None:
            raise InvalidField("give either `labels` or `labelset`, not both")
        stored = await store.get(body.labelset)
        return LabelSet(stored.labels, stored.templates)
    if body.labels is None:
        raise InvalidField("labels: required (or name a stored `labelset`)", field="labels")
    return define(body.labels, body.templates, s)


def parse_labelset_name(name: str) -> str:
    """PUT /labelsets/{name}'s name: 1-64 letters, digits, '_', '.', '-' (checked before anything else)."""
    return check_name(name)


async def parse_labelset(request: Request, s: Settings) -> LabelSet:
    """PUT /labelsets/{name}'s body: JSON `labels` and `templates`, checked as /classify's."""
    body = await read_json(request, LabelSetRequest)
    return define(body.labels, body.templates, s)


async def _image_bytes(request: Request, strings: list[str], field: str = "images",
                       positions: Optional[Sequence[int]] = None) -> list[bytes]:
    """Image strings -> bytes; URL downloads (CLIP_ALLOW_URLS) stop as soon as the client leaves."""
    work = images_from_strings(request, strings, field, positions)
    return await (until_done_or_gone(request, work) if any(map(is_url, strings)) else work)


# --- OpenAI's API -------------------------------------------------------------------------------------------------
async def parse_openai_embeddings(request: Request, s: Settings, backend: Backend) -> OpenAIEmbeddingsInputs:
    """POST /v1/embeddings: `input` strings are texts, except data: URIs (and https URLs when the server fetches
    them), which are images; `model` must name the served model; `dimensions` at most the model's. An error about
    one item names its place in `input` (`param` "input")."""
    if content_type(request) not in ("application/json", ""):
        raise UnsupportedMedia("send application/json: {\"model\": \"clip\", \"input\": [...]}")
    body = await read_json(request, OpenAIEmbeddingsRequest)
    check_model(body.model, backend)
    if body.dimensions is not None and body.dimensions > backend.embed_dim:
        raise InvalidField(f"dimensions: {body.dimensions} is more than the model's {backend.embed_dim}",
                           field="dimensions")
    items: list[Union[str, bytes]] = list(_input_strings(body.input))
    if not items:
        raise InvalidField("input: give at least one string", field="input")
    note_items(request, len(items))
    urls_allowed = getattr(request.app.state, "url_fetcher", None) is not None  # CLIP_ALLOW_URLS
    image_pos = [i for i, x in enumerate(items) if is_image(x, urls_allowed)]  # type: ignore[arg-type]
    n_texts = len(items) - len(image_pos)
    if n_texts:
        check_count("texts", n_texts, s.max_texts_per_request, "CLIP_MAX_TEXTS_PER_REQUEST")
    if image_pos:
        check_count("images", len(image_pos), s.max_images_per_request, "CLIP_MAX_IMAGES_PER_REQUEST")
        images = await _image_bytes(request, [items[i] for i in image_pos], "input", image_pos)  # type: ignore[misc]
        for i, data in zip(image_pos, images):
            items[i] = data
    return OpenAIEmbeddingsInputs(items, body.dimensions, body.encoding_format)


def check_model(requested: str, backend: Backend) -> None:
    """The request's `model` must name what this server serves: its id, its fingerprint, or an alias."""
    if requested in (backend.model_id, backend.fingerprint, *MODEL_ALIASES):
        return
    raise ModelNotFound(f"The model `{requested}` does not exist on this server. It serves `{backend.model_id}` "
                        f"(fingerprint {backend.fingerprint}); send that, the fingerprint, or `clip`.", field="model")


def _input_strings(value: object) -> list[str]:
    """The request's `input` as a list of strings; token arrays are refused with the reason."""
    items = [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    if any(not isinstance(x, str) for x in items):
        raise InvalidField("input: token arrays are not supported (this server tokenises with the model's own "
                           "tokenizer); send strings. LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False)",
                           field="input")
    return items


def is_image(item: str, urls_allowed: bool) -> bool:
    """data: URIs go to the image tower (a non-image data URI is refused with 415, not embedded as text); so do
    single http(s) URLs when the server fetches image URLs. Everything else is text."""
    item = item.strip()
    return item[:5].lower() == "data:" or (urls_allowed and bool(_HTTP_URL.match(item)))

"""A short, stable identity for a model: weights + preprocessing + tokenizer.

Embeddings from models with different fingerprints must never be mixed; the service puts the fingerprint
in every response and in every cache key.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from typing import Any

import torch
from open_clip.tokenizer import get_clean_fn


def _tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    ident: dict[str, Any] = {"class": type(tokenizer).__name__,
                             "context_length": getattr(tokenizer, "context_length", None)}
    encoder = getattr(tokenizer, "encoder", None)
    if isinstance(encoder, dict):
        ident["vocab_size"] = len(encoder)
    # an HF tokenizer: its name/path identifies it
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None:
        ident["name"] = getattr(inner, "name_or_path", type(inner).__name__)
    ident.update(_token_options(tokenizer))
    return ident


def _token_options(tokenizer: Any) -> dict[str, Any]:
    """The options that give other tokens for the same text and vocabulary (open_clip's text_cfg.tokenizer_kwargs):
    text cleaning, token reduction, [SEP] stripping, tokenizer mode. Only values other than the tokenizer class's
    defaults are added, so a fingerprint taken before these were hashed (model cards, export manifests, vector
    stores) keeps its value."""
    opts: dict[str, Any] = {}
    clean = getattr(tokenizer, "clean_fn", None)
    default_clean = inspect.signature(type(tokenizer).__init__).parameters.get("clean")
    if clean is not None and (default_clean is None or clean is not get_clean_fn(default_clean.default)):
        opts["clean"] = _function_name(clean)
    if getattr(tokenizer, "reduction_fn", None) is not None:
        opts["reduction"] = _function_name(tokenizer.reduction_fn)
    if getattr(tokenizer, "strip_sep_token", False):
        opts["strip_sep_token"] = True
    if getattr(tokenizer, "tokenizer_mode", ""):
        opts["mode"] = tokenizer.tokenizer_mode
    return opts


def _function_name(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        return f"{_function_name(fn.func)}{sorted(fn.keywords.items())}"
    return getattr(fn, "__qualname__", repr(fn))


def fingerprint_state_dict(state: dict[str, torch.Tensor]) -> str:
    """sha256 over tensor names, dtypes, shapes and bytes, in sorted-name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fingerprint_model(model: torch.nn.Module, preprocess: Any, tokenizer: Any) -> str:
    """16 hex chars identifying weights, preprocessing and tokenizer together."""
    h = hashlib.sha256(fingerprint_state_dict(model.state_dict()).encode())
    pre = preprocess.to_dict() if hasattr(preprocess, "to_dict") else preprocess
    h.update(json.dumps(pre, sort_keys=True).encode())
    h.update(json.dumps(_tokenizer_identity(tokenizer), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]

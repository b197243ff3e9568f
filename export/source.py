"""Where an export's eager model comes from, and rebuilding it (for parity, verify and bench)."""

from __future__ import annotations

from pathlib import Path

from export.errors import ExportError
from export.manifest import Manifest, SourceSpec
from models.factory import LoadedModel, load_model


def source_spec(model: str, pretrained: str | None = None, checkpoint: str | None = None) -> SourceSpec:
    """A SourceSpec with local paths made absolute, so verify/bench work from any directory later."""
    model = str(Path(model).resolve()) if Path(model).exists() else model
    checkpoint = str(Path(checkpoint).resolve()) if checkpoint else None
    return SourceSpec(model=model, pretrained=pretrained, checkpoint=checkpoint)


def load_source(spec: SourceSpec, device: str = "cpu", precision: str = "fp32") -> LoadedModel:
    """The eager model a SourceSpec names, in `precision` as the torch backend serves it (open_clip's fp16 keeps
    LayerNorm and embeddings in fp32; a plain `model.half()` is another model). Its fingerprint hashes the weights
    as loaded, so only an fp32 load matches an export's."""
    return load_model(spec.model, pretrained=spec.pretrained, checkpoint=spec.checkpoint, device=device,
                      precision=precision)


def eager_model_for(manifest: Manifest, override: SourceSpec | None = None, device: str = "cpu") -> LoadedModel:
    """Rebuild the eager model of an export and check it is the same model (same fingerprint)."""
    spec = override or manifest.source
    try:
        loaded = load_source(spec, device)
    except (OSError, ValueError, RuntimeError) as e:
        raise ExportError(f"cannot rebuild the source model of this export ({spec}): {e}. Pass --model "
                          f"(and --checkpoint / --pretrained) to say where it is now.") from e
    if loaded.fingerprint != manifest.fingerprint:
        raise ExportError(f"the model at {spec.model} has fingerprint {loaded.fingerprint}, the export was made "
                          f"from {manifest.fingerprint}: the weights changed since export; re-export.")
    return loaded

"""The four ratios of issue 7, each with its target, from one run's results."""

from __future__ import annotations

from typing import Any

TARGETS = {  # (comparison, threshold): on a 2-core CPU, ViT-B-32 shape through ONNX Runtime
    "serving_efficiency": (">=", 0.85),
    "batching_gain": (">=", 1.3),
    "cached_classify_over_embed": ("<=", 1.2),
    "reduced_decode_speedup": (">=", 3.0),
    "reduced_decode_min_cosine": (">=", 0.99),
}


def _points(served: dict, scenario: str) -> list[dict]:
    return served.get("scenarios", {}).get(scenario, {}).get("points", [])


def _best_point(served: dict, scenario: str) -> dict | None:
    return max(_points(served, scenario), key=lambda p: p["items_per_s"], default=None)


def _point_at(served: dict, scenario: str, concurrency: int) -> dict | None:
    return next((p for p in _points(served, scenario) if p["concurrency"] == concurrency), None)


def _encoder_best(encoder: list[dict], model: str, backend: str, tower: str, int8: bool = False) -> dict | None:
    """The fastest batch size of a (model, backend, tower): the served precision's rows, or the int8 ones."""
    rows = [r for r in encoder if (r["model"], r["backend"], r["tower"]) == (model, backend, tower)
            and (r.get("precision") == "int8") == int8]
    return max(rows, key=lambda r: r["items_per_s"], default=None)


def _verdict(name: str, value: float | None) -> str:
    if value is None:
        return "not measured"
    op, threshold = TARGETS[name]
    ok = value >= threshold if op == ">=" else value <= threshold
    return "met" if ok else "NOT met"


def compute(encoder: list[dict], served: dict, decode: dict, model: str = "vit-b-32") -> dict[str, Any]:
    """Ratios for one served model (same backend on both sides of a)."""
    backend = served.get("backend", "onnx")
    out: dict[str, Any] = {"model": model, "backend": backend}

    # a. serving efficiency, per image/text scenario
    eff = {}
    for scenario, tower in (("image-224", "image"), ("image-1080p", "image"), ("text", "text")):
        best, enc = _best_point(served, scenario), _encoder_best(encoder, model, backend, tower)
        if best and enc:
            eff[scenario] = {"value": best["items_per_s"] / enc["items_per_s"],
                             "served_items_per_s": best["items_per_s"], "at_concurrency": best["concurrency"],
                             "encoder_items_per_s": enc["items_per_s"], "at_batch": enc["batch"]}
    out["serving_efficiency"] = eff

    # b. batching gain at concurrency 32 (at the batch-1 point's concurrency in a quick run)
    one = next(iter(_points(served, "image-224-batch1")), None)
    dyn = _point_at(served, "image-224", one["concurrency"]) if one else None
    out["batching_gain"] = ({"value": dyn["items_per_s"] / one["items_per_s"], "at_concurrency": one["concurrency"],
                             "dynamic_items_per_s":
                             dyn["items_per_s"], "max_batch_1_items_per_s": one["items_per_s"],
                             "dynamic_mean_batch": dyn.get("mean_batch")} if dyn and one else None)

    # c. cached classify latency / embed latency, one image at concurrency 1 (p50)
    embed = _point_at(served, "image-224", 1)
    cls = {}
    for scenario in ("classify-10x80", "classify-1000x80", "classify-cold"):
        p = _point_at(served, scenario, 1)
        if p and embed and p["latency_ms"] and embed["latency_ms"]:
            cls[scenario] = {"value": p["latency_ms"]["p50"] / embed["latency_ms"]["p50"],
                             "classify_p50_ms": p["latency_ms"]["p50"], "embed_p50_ms": embed["latency_ms"]["p50"]}
    out["cached_classify_over_embed"] = cls

    # d. reduced-size decoding
    d = decode.get("models", {}).get(model)
    out["reduced_decode"] = ({"speedup": d["speedup"], "min_cosine": d["min_cosine_reduced_vs_full"],
                              "full_items_per_s": d["full_items_per_s"],
                              "reduced_items_per_s": d["reduced_items_per_s"]} if d else None)
    out["verdicts"] = verdicts(out)
    return out


def verdicts(r: dict) -> dict[str, str]:
    eff = r["serving_efficiency"].get("image-224", {}).get("value")
    gain = (r["batching_gain"] or {}).get("value")
    cached = r["cached_classify_over_embed"]
    worst_cached = max((v["value"] for k, v in cached.items() if k != "classify-cold"), default=None)
    d = r["reduced_decode"] or {}
    return {"serving_efficiency": _verdict("serving_efficiency", eff),
            "batching_gain": _verdict("batching_gain", gain),
            "cached_classify_over_embed": _verdict("cached_classify_over_embed", worst_cached),
            "reduced_decode_speedup": _verdict("reduced_decode_speedup", d.get("speedup")),
            "reduced_decode_min_cosine": _verdict("reduced_decode_min_cosine", d.get("min_cosine"))}


def table(r: dict) -> str:
    """Markdown: each ratio, its value, its target, met or not."""
    def f(x: float | None, digits: int = 2) -> str:
        return "–" if x is None else f"{x:.{digits}f}"

    eff = r["serving_efficiency"]
    gain = r["batching_gain"] or {}
    cached = r["cached_classify_over_embed"]
    d = r["reduced_decode"] or {}
    v = r["verdicts"]
    rows = [("a. serving efficiency, 224×224 JPEG", eff.get("image-224", {}).get("value"), "≥ 0.85",
             v["serving_efficiency"],
             _detail_eff(eff.get("image-224"))),
            ("a. serving efficiency, 1920×1080 JPEG", eff.get("image-1080p", {}).get("value"), "–", "",
             _detail_eff(eff.get("image-1080p"))),
            ("a. serving efficiency, text", eff.get("text", {}).get("value"), "–", "", _detail_eff(eff.get("text"))),
            (f"b. batching gain at concurrency {gain.get('at_concurrency', 32)}", gain.get("value"), "≥ 1.3", v["batching_gain"],
             f"{f(gain.get('dynamic_items_per_s'), 1)} vs {f(gain.get('max_batch_1_items_per_s'), 1)} img/s; "
             f"mean batch {gain.get('dynamic_mean_batch')}" if gain else "")]
    for name, c in cached.items():
        rows.append((f"c. {name} ÷ embed, p50 at concurrency 1", c["value"],
                     "≤ 1.2" if name != "classify-cold" else "–",
                     v["cached_classify_over_embed"] if name != "classify-cold" else "",
                     f"{c['classify_p50_ms']:.1f} vs {c['embed_p50_ms']:.1f} ms"))
    rows.append(("d. reduced ÷ full decoding, 1920×1080 JPEG", d.get("speedup"), "≥ 3", v["reduced_decode_speedup"],
                 f"{f(d.get('reduced_items_per_s'), 1)} vs {f(d.get('full_items_per_s'), 1)} img/s, one thread"))
    rows.append(("d. min cosine reduced vs full (real photos)", d.get("min_cosine"), "≥ 0.99",
                 v["reduced_decode_min_cosine"], ""))
    lines = ["| ratio | value | target | | detail |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {f(val, 4 if 'cosine' in name else 2)} | {target} | {verdict} | {detail} |"
              for name, val, target, verdict, detail in rows]
    return "\n".join(lines)


def _detail_eff(e: dict | None) -> str:
    if not e:
        return ""
    return (f"{e['served_items_per_s']:.1f} items/s served (c={e['at_concurrency']}) vs "
            f"{e['encoder_items_per_s']:.1f} in-process (batch {e['at_batch']})")


INT8_TARGETS = {  # issue 14, ViT-B-32 on a 2-core CPU: int8 export against the fp32 export, same run
    "encoder_image": (">=", 2.5),
    "encoder_text": (">=", 2.0),
    "served_image_c16": (">=", 2.0),
    "p50_c1": ("<", 1.0),
}


def int8(encoder: list[dict], compare: dict, model: str) -> dict[str, Any]:
    """int8 over fp32 (ONNX Runtime, CPU): encoder limits, served /embed/image at concurrency 16, p50 at 1."""
    out: dict[str, Any] = {"model": model}
    for tower in ("image", "text"):
        fp32, q = _encoder_best(encoder, model, "onnx", tower), _encoder_best(encoder, model, "onnx", tower, int8=True)
        out[f"encoder_{tower}"] = ({"value": q["items_per_s"] / fp32["items_per_s"], "int8_items_per_s": q["items_per_s"],
                                    "int8_batch": q["batch"], "fp32_items_per_s": fp32["items_per_s"],
                                    "fp32_batch": fp32["batch"]} if fp32 and q else None)
    scen = compare.get("scenarios", {})
    fp32_pts, int8_pts = {"scenarios": scen.get("fp32", {})}, {"scenarios": scen.get("int8", {})}
    for name in ("image-224", "text"):
        for c in sorted({p["concurrency"] for p in _points(fp32_pts, name)}):
            a, b = _point_at(fp32_pts, name, c), _point_at(int8_pts, name, c)
            if a and b and a["items_per_s"] and a["latency_ms"] and b["latency_ms"]:
                out.setdefault("served", {}).setdefault(name, {})[c] = {
                    "value": b["items_per_s"] / a["items_per_s"], "fp32_items_per_s": a["items_per_s"],
                    "int8_items_per_s": b["items_per_s"], "fp32_p50_ms": a["latency_ms"]["p50"],
                    "int8_p50_ms": b["latency_ms"]["p50"],  # server CPU per item: steadier on a shared machine
                    "fp32_cpu_ms_per_item": a.get("server_cpu_ms_per_item"),
                    "int8_cpu_ms_per_item": b.get("server_cpu_ms_per_item")}
    image = out.get("served", {}).get("image-224", {})
    c16 = image.get(16) or (image[max(image)] if image else None)  # a quick run stops below 16
    out["served_image_c16"] = {**c16, "at_concurrency": 16 if 16 in image else max(image)} if c16 else None
    one = image.get(1)
    out["p50_c1"] = {**one, "value": one["int8_p50_ms"] / one["fp32_p50_ms"]} if one else None
    targeted = model == "vit-b-32"  # the targets are for ViT-B-32; other models are reported only
    out["verdicts"] = {k: _check(INT8_TARGETS[k], (out.get(k) or {}).get("value")) if targeted else "no target"
                       for k in INT8_TARGETS}
    return out


def _check(target: tuple[str, float], value: float | None) -> str:
    if value is None:
        return "not measured"
    op, threshold = target
    return "met" if (value >= threshold if op == ">=" else value < threshold) else "NOT met"


def int8_table(r: dict) -> str:
    """Markdown: each int8 ratio, its value, its target, met or not."""
    rows = []
    for key, label in (("encoder_image", "image encoder limit, int8 ÷ fp32"),
                       ("encoder_text", "text encoder limit, int8 ÷ fp32")):
        e = r.get(key)
        rows.append((label, e and e["value"], key, e and f"{e['int8_items_per_s']:.1f} (batch {e['int8_batch']}) vs "
                                                        f"{e['fp32_items_per_s']:.1f} (batch {e['fp32_batch']}) items/s"))
    s = r.get("served_image_c16")
    rows.append((f"served /embed/image at concurrency {s['at_concurrency'] if s else 16}, int8 ÷ fp32",
                 s and s["value"], "served_image_c16",
                 s and f"{s['int8_items_per_s']:.1f} vs {s['fp32_items_per_s']:.1f} img/s"))
    p = r.get("p50_c1")
    rows.append(("served /embed/image p50 at concurrency 1, int8 ÷ fp32", p and p["value"], "p50_c1",
                 p and f"{p['int8_p50_ms']:.1f} vs {p['fp32_p50_ms']:.1f} ms"))
    lines = ["| ratio | value | target | | detail |", "|---|---|---|---|---|"]
    for label, value, key, detail in rows:
        op, threshold = INT8_TARGETS[key]
        shown = "–" if value is None else f"{value:.2f}"
        target = f"{op} {threshold:g}" if r["verdicts"][key] != "no target" else "–"
        lines.append(f"| {label} | {shown} | {target} | {r['verdicts'][key]} | {detail or ''} |")
    return "\n".join(lines)

"""int8 ratios from a results dict: which numbers are divided, and the verdicts against issue 14's targets."""

from __future__ import annotations

from bench import ratios


def _row(precision: str, tower: str, batch: int, items_per_s: float) -> dict:
    return {"model": "vit-b-32", "backend": "onnx", "precision": precision, "tower": tower, "batch": batch,
            "items_per_s": items_per_s}


def _point(c: int, items_per_s: float, p50: float) -> dict:
    return {"concurrency": c, "items_per_s": items_per_s, "latency_ms": {"p50": p50}}


def test_int8_ratios_divide_the_best_batch_of_each_precision_and_the_served_points():
    encoder = [_row("fp32", "image", 1, 15.0), _row("fp32", "image", 8, 20.0), _row("int8", "image", 1, 55.0),
               _row("int8", "image", 8, 70.0), _row("fp32", "text", 8, 24.0), _row("int8", "text", 8, 40.0),
               {**_row("fp32", "image", 8, 99.0), "backend": "torch"}]  # another backend: not a divisor
    compare = {"scenarios": {
        "fp32": {"image-224": {"points": [_point(1, 12.0, 80.0), _point(16, 18.0, 900.0)]}},
        "int8": {"image-224": {"points": [_point(1, 30.0, 33.0), _point(16, 45.0, 350.0)]}}}}
    r = ratios.int8(encoder, compare, "vit-b-32")
    assert r["encoder_image"]["value"] == 70.0 / 20.0 and r["encoder_image"]["int8_batch"] == 8
    assert r["encoder_text"]["value"] == 40.0 / 24.0
    assert r["served_image_c16"]["value"] == 45.0 / 18.0 and r["served_image_c16"]["at_concurrency"] == 16
    assert r["p50_c1"]["value"] == 33.0 / 80.0
    assert r["verdicts"] == {"encoder_image": "met", "encoder_text": "NOT met", "served_image_c16": "met",
                             "p50_c1": "met"}
    table = ratios.int8_table(r)
    assert "| image encoder limit, int8 ÷ fp32 | 3.50 | >= 2.5 | met |" in table
    assert "served /embed/image at concurrency 16" in table


def test_fp32_ratios_ignore_int8_rows():
    encoder = [_row("fp32", "image", 8, 20.0), _row("int8", "image", 8, 70.0)]
    served = {"backend": "onnx", "scenarios": {"image-224": {"points": [_point(32, 18.0, 1000.0)]}}}
    r = ratios.compute(encoder, served, {}, "vit-b-32")
    assert r["serving_efficiency"]["image-224"]["encoder_items_per_s"] == 20.0

"""results.json -> results.md (tables) and the PNG plots, all under the output folder."""

from __future__ import annotations

import json
from pathlib import Path

from bench import plots, ratios
from bench.machine import summary


def encoder_table(rows: list[dict]) -> str:
    lines = ["| model | backend | tower | batch | items/s | ms/batch | other processes (cores) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['backend']} {r['device']} {r['precision']} | {r['tower']} | {r['batch']} | "
                     f"{r['items_per_s']:.1f} | {r['ms_per_batch']:.1f} | {r.get('other_processes_cores')} |")
    return "\n".join(lines)


def served_table(served: dict) -> str:
    lines = ["| scenario | concurrency | items/s | p50 ms | p99 ms | mean batch | server CPU ms/item | errors | "
             "peak RSS MiB | other processes (cores) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in served["scenarios"].items():
        for p in s["points"]:
            lat = p["latency_ms"] or {}
            errors = ", ".join(f"{k}: {v}" for k, v in p["errors"].items()) or "0"
            lines.append(f"| {name} | {p['concurrency']} | {p['items_per_s']:.1f} | {lat.get('p50', 0):.1f} | "
                         f"{lat.get('p99', 0):.1f} | {p['mean_batch']} | {p.get('server_cpu_ms_per_item')} | {errors} | "
                         f"{s['peak_rss_mib']} | {p.get('other_processes_cores')} |")
    return "\n".join(lines)


def decode_table(decode: dict) -> str:
    lines = ["| model (input) | full decode img/s | reduced img/s | speed-up | min cos reduced vs full | "
             "max cos between different photos |", "|---|---|---|---|---|---|"]
    for key, d in decode.get("models", {}).items():
        lines.append(f"| {key} ({d['input_size'][0]}×{d['input_size'][1]}) | {d['full_items_per_s']:.1f} | "
                     f"{d['reduced_items_per_s']:.1f} | {d['speedup']:.2f}× | {d['min_cosine_reduced_vs_full']:.4f} | "
                     f"{d['max_cosine_between_different_photos']:.4f} |")
    return "\n".join(lines)


def write(results: dict, out: Path) -> list[Path]:
    """results.json, results.md and one set of plots per served model; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "results.json"]
    files[0].write_text(json.dumps(results, indent=2) + "\n")
    md = [f"# Benchmark results ({'quick' if results['quick'] else 'full'} run, {results['finished']})", "",
          f"Machine: {summary(results['machine'])}.", "",
          f"Written by `python -m bench{' --quick' if results['quick'] else ''}`; raw numbers in `results.json`. "
          f"The log of what each change bought is in [README.md](README.md).", ""]
    for key, r in results.get("ratios", {}).items():
        md += [f"## Ratios: {key}", "", ratios.table(r), ""]
    md += ["## Encoder limit (in-process, no HTTP)", "", encoder_table(results.get("encoder", [])), ""]
    for key, served in results.get("served", {}).items():
        info = served["info"]
        title = f"{info.get('model', served['model'])} via {served['backend']} ({info.get('device', '?')})"
        md += [f"## Served: {title}", "", served_table(served), ""]
        md += [f"- {name}: {note}" for name, note in served.get("notes", {}).items()] + [""]
        limit = {f"encoder limit, image ({r['backend']} b{r['batch']})": r["items_per_s"]
                 for r in [_best(results.get("encoder", []), served["model"], served["backend"], "image")] if r}
        for name, fn in (("throughput", lambda p: plots.throughput(served, limit, p, title)),
                         ("latency", lambda p: plots.latency(served, p, title)),
                         ("batch-sizes", lambda p: plots.batch_sizes(served, p, title))):
            path = fn(out / f"{name}-{key}.png")
            files.append(path)
            md.append(f"![{name} {key}]({path.name})")
        md.append("")
    for key, compare in results.get("int8", {}).items():
        md += int8_section(results, key, compare, out, files)
    if results.get("decode"):
        md += ["## 1920×1080 JPEG preprocessing: reduced-size vs full decoding", "", results["decode"]["image"], "",
               decode_table(results["decode"]), ""]
    if results.get("errors"):
        md += ["## Errors", ""] + [f"- {x}" for x in results["errors"]] + [""]
    if results.get("not_run"):
        md += ["## Not run", ""] + [f"- {x}" for x in results["not_run"]] + [""]
    (out / "results.md").write_text("\n".join(md))
    files.append(out / "results.md")
    return files


def int8_section(results: dict, key: str, compare: dict, out: Path, files: list[Path]) -> list[str]:
    """Markdown (and a plot) for int8 against fp32 on one model: ratios, encoder cells, served points."""
    rows = [r for r in results.get("encoder", []) if r["model"] == key and r["backend"] == "onnx"]
    cell = {(r["tower"], r["batch"], r["precision"]): r for r in rows}
    enc = ["| tower | batch | fp32 items/s | int8 items/s | int8 ÷ fp32 |", "|---|---|---|---|---|"]
    for tower, batch in sorted({(t, b) for t, b, _ in cell}):
        a, b = cell.get((tower, batch, "fp32")), cell.get((tower, batch, "int8"))
        if a and b:
            enc.append(f"| {tower} | {batch} | {a['items_per_s']:.1f} | {b['items_per_s']:.1f} | "
                       f"{b['items_per_s'] / a['items_per_s']:.2f}× |")
    served = ["| scenario | concurrency | fp32 items/s | int8 items/s | int8 ÷ fp32 | fp32 p50 ms | int8 p50 ms | "
              "server CPU ms/item fp32 / int8 | other processes (cores) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, by_c in results.get("ratios_int8", {}).get(key, {}).get("served", {}).items():
        for c, v in sorted(by_c.items(), key=lambda kv: int(kv[0])):
            busy = max((p.get("other_processes_cores") or 0.0) for s in compare["scenarios"].values()
                       for p in s.get(name, {}).get("points", []) if p["concurrency"] == int(c))
            served.append(f"| {name} | {c} | {v['fp32_items_per_s']:.1f} | {v['int8_items_per_s']:.1f} | "
                          f"{v['value']:.2f}× | {v['fp32_p50_ms']:.1f} | {v['int8_p50_ms']:.1f} | "
                          f"{v.get('fp32_cpu_ms_per_item')} / {v.get('int8_cpu_ms_per_item')} | {busy} |")
    path = plots.precision(results.get("encoder", []), compare, key, out / f"int8-{key}.png",
                           f"{key}: fp32 vs int8 (ONNX Runtime, CPU)")
    files.append(path)
    r = results.get("ratios_int8", {}).get(key)
    md = [f"## int8 vs fp32: {key}", "", ratios.int8_table(r) if r else "", ""]
    if len(enc) > 2:
        md += [f"Encoder limit (in-process, runners interleaved in {results.get('encoder_rounds', 1)} rounds):", "",
               *enc, ""]
    return md + [f"Served (both servers up, points alternating, {compare.get('rounds', 1)} rounds each; peak RSS "
                 f"fp32 {_rss(compare, 'fp32')} MiB, int8 {_rss(compare, 'int8')} MiB):", "", *served, "",
                 f"![int8 {key}]({path.name})", ""]


def _rss(compare: dict, precision: str) -> float | None:
    return max((s.get("peak_rss_mib") or 0.0 for s in compare["scenarios"].get(precision, {}).values()), default=None)


def _best(rows: list[dict], model: str, backend: str, tower: str, precision: str | None = None) -> dict | None:
    mine = [r for r in rows if (r["model"], r["backend"], r["tower"]) == (model, backend, tower)
            and (r.get("precision") == "int8") == (precision == "int8")]
    return max(mine, key=lambda r: r["items_per_s"], default=None)


# --- python -m bench.feed ------------------------------------------------------------------------------------------
def feed_table(results: dict) -> str:
    """Served images/s per server and request size, against decode_limit and against the first server (the baseline
    when there is one). On a shared machine the wall-clock ratio to decode_limit moves with the other processes'
    load; the CPU ratio (decode CPU per image ÷ server CPU per image: the share of decode_limit a CPU-bound server
    reaches on a quiet machine) does not."""
    limit = results["decode_limit"]
    first = {p["images_per_request"]: p["images_per_s"] for p in results["points"]
             if p["server"] == results["points"][0]["server"]}
    lines = [f"decode_limit: {limit['images_per_s']:.0f} images/s measured ({limit['processes']} processes, other "
             f"processes {limit['other_processes_cores']} cores), {limit['cpu_ms_per_image']} ms of CPU per image "
             f"({limit['cpu_images_per_s']:.0f} images/s on {limit['processes']} idle cores); model input "
             f"{limit['input_size'][0]} px", "",
             "| server | images/request | connections | images/s | ÷ decode_limit | ÷ first row's server | "
             "server CPU ms/image | ÷ decode_limit by CPU | p50 ms | p99 ms | mean batch | non-2xx | "
             "other processes (cores) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in results["points"]:
        base, cpu = first.get(p["images_per_request"]), p["server_cpu_ms_per_image"]
        by_cpu = f"{limit['cpu_ms_per_image'] / cpu:.2f}" if cpu and limit["cpu_ms_per_image"] else "–"
        lines.append(f"| {p['server']} | {p['images_per_request']} | {p['connections']} | {p['images_per_s']:.1f} | "
                     f"{p['images_per_s'] / limit['images_per_s']:.2f} | "
                     f"{p['images_per_s'] / base if base else float('nan'):.2f} | {cpu} | {by_cpu} | "
                     f"{p['p50_ms']} | {p['p99_ms']} | {p['mean_batch']} | {p['non_2xx']} | "
                     f"{p['other_processes_cores']} |")
    return "\n".join(lines)


_NORMALISED = {"device": "on the stand-in's device, as eager PyTorch on CUDA does (the CPU copies the uint8 batch "
                         "into the upload buffer)",
               "cpu": "on the CPU, as ONNX Runtime and TensorRT engines do"}


def write_feed(results: dict, out: Path, name: str = "feed") -> list[Path]:
    """<name>.json, .md and .png under `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"{name}.json", out / f"{name}.md", out / f"{name}.png"]
    files[0].write_text(json.dumps(results, indent=2) + "\n")
    cfg = results["config"]
    title = (f"stand-in {cfg['standin_batch_ms']:g} ms + {cfg['standin_item_ms']:g} ms/item, "
             f"{cfg['model_input'][0]} px input")
    plots.feed(results, files[2], f"Feeding an accelerator ({title})")
    md = [f"# Feeding an accelerator: served through the stand-in backend ({results['finished']})", "",
          f"Machine: {summary(results['machine'])}; load average before serving "
          f"{results['load_average'].get('served')}.", "",
          f"Written by `python -m bench.feed`; raw numbers in `{files[0].name}`. Image: {cfg['image']}; per point "
          f"{cfg['rounds']} wrk windows ({cfg['seconds']:g} s in all), each after {cfg['warmup_s']:g} s of warm-up, "
          f"the servers taking turns; {cfg['in_flight']} images in flight. With CLIP_WORKERS >= 1 the engine "
          f"normalises the pixels {_NORMALISED.get(cfg.get('standin_normalise', 'cpu'), '?')}; in one process "
          f"(the baseline, CLIP_WORKERS=0) the preprocessing threads normalise on the CPU.", "",
          feed_table(results), "", f"![feed]({files[2].name})", ""]
    files[1].write_text("\n".join(md))
    return files

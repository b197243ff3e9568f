"""Peak memory of preprocessing one image near the pixel cap: the decoded image plus small change, never a
full-size float or RGBA copy (a 40 MP 16-bit PNG used to raise the peak by 1.1 GB, an RGBA one by 0.9 GB).

tracemalloc does not see Pillow's C allocations, so each image is measured as the RSS high-water mark (VmHWM)
of a child process, reset just before the call through /proc/self/clear_refs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
MAX_PIXELS = 40_000_000
MIB = 1 << 20
WORST_BYTES_PER_PIXEL = 10  # README, Preprocessing: the documented worst case, an extreme aspect ratio
# Bytes per pixel of Pillow's decoded image: 16-bit grey 2, palette 1, every multi-band mode 4.
DECODED_BPP = {"I;16": 2, "P": 1, "RGBA": 4, "CMYK": 4}

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")

# One child imports the modules once, then forks one grandchild per image (as DataLoader workers do), so each
# measurement starts from the same clean process; torch is imported but runs nothing before the fork.
MEASURE = r"""
import io, json, os, sys
from PIL import Image
from models.preprocess import PreprocessConfig
from service.images import ImagePreprocessor

def kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])

for path in sys.argv[1:]:
    r, w = os.pipe()
    if os.fork() == 0:
        pre = ImagePreprocessor(PreprocessConfig(size=(224, 224)), max_pixels=%d)
        warm = io.BytesIO(); Image.new("RGBA", (300, 300)).save(warm, "PNG"); pre(warm.getvalue())
        data = open(path, "rb").read()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # peak RSS := current RSS
        base = kib("VmRSS")
        pre(data)
        os.write(w, str((kib("VmHWM") - base) * 1024).encode())
        os._exit(0)
    os.close(w)
    print(json.dumps({"path": path, "peak": int(os.read(r, 64))}), flush=True)
    os.wait()
""" % MAX_PIXELS


def _pattern(w: int, h: int) -> np.ndarray:
    """Smooth content: compresses to a small file (as an attacker would send) but is not constant."""
    y, x = np.ogrid[:h, :w]
    return ((x * 255 // w + y * 255 // h) // 2).astype(np.uint8)


@pytest.fixture(scope="module")
def near_cap_images(tmp_path_factory) -> dict[str, tuple[Path, Image.Image]]:
    """name -> (file, header-only image), each just under CLIP_MAX_IMAGE_PIXELS."""
    out = tmp_path_factory.mktemp("near-cap")
    g = _pattern(6320, 6320)  # 39.9 MP
    bands = [Image.fromarray(g), Image.fromarray(255 - g), Image.fromarray(g // 2)]
    rgb = Image.merge("RGB", bands)
    palette = rgb.quantize(64)
    made = {
        "16-bit grey": ("grey16.png", Image.fromarray(_pattern(6000, 6600).astype(np.uint16) * 257), {}),
        "RGBA": ("rgba.png", Image.merge("RGBA", bands + [Image.fromarray((g > 100).astype(np.uint8) * 200)]), {}),
        "CMYK": ("cmyk.tif", rgb.convert("CMYK"), {"compression": "tiff_deflate"}),
        "palette": ("palette.png", palette, {}),
        "palette + transparency": ("palette-trns.png", palette, {"transparency": 3}),
        # too narrow to reduce (shortest side < 4x the model input): converted at full size, the worst case
        "RGBA, 300 pixels wide": ("thin.png", Image.fromarray(np.dstack([_pattern(300, 133_333)] * 4), "RGBA"), {}),
    }
    files = {}
    for name, (fname, img, kw) in made.items():
        img.save(out / fname, **kw)
        files[name] = (out / fname, Image.open(out / fname))
    return files


def _peaks(paths: list[Path]) -> dict[str, int]:
    proc = subprocess.run([sys.executable, "-c", MEASURE, *map(str, paths)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r["path"]: r["peak"] for r in map(json.loads, proc.stdout.splitlines())}


def test_peak_memory_is_the_decoded_image_plus_a_fraction_of_its_rgb_size(near_cap_images):
    peaks = _peaks([p for p, _ in near_cap_images.values()])
    report, over = [], []
    for name, (path, img) in near_cap_images.items():
        w, h = img.size
        assert MAX_PIXELS * 0.98 < w * h <= MAX_PIXELS
        rgb_size = 3 * w * h
        # Allowed: Pillow's decoded image + half its 8-bit RGB size (bands, the reduced copy, allocator slack);
        # an image too narrow to reduce gets the documented worst case.
        bound = DECODED_BPP[img.mode] * w * h + rgb_size // 2 if min(w, h) > 1000 else WORST_BYTES_PER_PIXEL * w * h
        peak = peaks[str(path)]
        report.append(f"{name} {w}x{h} {img.mode}: peak +{peak / MIB:.0f} MiB (bound {bound / MIB:.0f} MiB, "
                      f"{peak / rgb_size:.2f}x its RGB size)")
        if peak > bound:
            over.append(name)
    print("\n".join(report))
    assert not over, "\n".join(report)

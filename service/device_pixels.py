"""uint8 pixel batches normalised on the GPU, for an engine process with an eager-PyTorch CUDA backend.

**Not run on a GPU yet** (this repository's machines have none): written against PyTorch's documentation of pinned
memory (`Tensor.pin_memory`, `non_blocking=True` copies) and streams (`torch.cuda.Stream`, `torch.cuda.stream`).

Each of SLOTS slots owns a pinned host buffer uint8 [max_batch, H, W, 3] and a CUDA stream. An encoder call takes a
slot, copies its batch's images into the pinned buffer, each once (the batcher hands over the items, not a stacked
batch; pageable memory would make the upload synchronous), uploads them on the slot's stream, normalises them there
exactly as models.preprocess.normalise does on the CPU (float32: /255, subtract the mean, divide by the std, in that
order), runs the model and copies the embeddings back, which waits for that
stream only. With two encoder calls in flight (the image batcher's `in_flight = 2`, service/engine_server.py) one
batch uploads while the other computes. A quarter of float32's bytes cross PCIe.

ONNX Runtime and TensorRT backends take host arrays and copy them themselves; they keep the CPU normalisation
(`device_encoder` returns None for them).
"""

from __future__ import annotations

import queue
from typing import Any, Callable, Optional, Sequence

import numpy as np

SLOTS = 2  # batches in flight: one uploading while one computes


def device_encoder(backend: Any, max_batch: int) -> Optional[Callable[[Sequence[np.ndarray]], np.ndarray]]:
    """An encode step for a batch's uint8 [H, W, 3] images on the backend's GPU, or None where the backend's encoder
    does not take device tensors (every backend but eager PyTorch)."""
    towers = getattr(backend, "towers", None)
    if towers is None or not hasattr(towers, "model") or not str(getattr(towers, "device", "")).startswith("cuda"):
        return None
    return DevicePixels(towers, backend.preprocess, max_batch)


class DevicePixels:
    """uint8 host batches -> L2-normalised float32 embeddings [B, D], normalised on the device."""

    def __init__(self, towers: Any, pre: Any, max_batch: int, slots: int = SLOTS):
        import torch

        self.torch, self.model, self.dtype = torch, towers.model, towers._dtype
        self.device = torch.device(towers.device)
        h, w = pre.size
        self.max_batch = max_batch
        self.mean = torch.tensor(pre.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.slots: queue.Queue = queue.Queue()
        for _ in range(slots):
            self.slots.put((torch.empty((max_batch, h, w, 3), dtype=torch.uint8).pin_memory(),
                            torch.cuda.Stream(device=self.device)))

    def __call__(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        """B uint8 [H, W, 3] images (a list, or an array [B, H, W, 3]) -> float32 [B, D]; called from the inference
        threads, one slot each."""
        outs = [self._encode(batch[i:i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        return np.concatenate(outs) if len(outs) > 1 else outs[0]

    def _encode(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        torch = self.torch
        host, stream = self.slots.get()
        try:
            n = len(batch)
            np.stack(batch, out=host[:n].numpy())  # into pinned memory: the upload below can then be asynchronous
            with torch.cuda.stream(stream), torch.inference_mode():
                rgb = host[:n].to(self.device, non_blocking=True)  # [B, H, W, 3] uint8
                x = rgb.permute(0, 3, 1, 2).float().div_(255).sub_(self.mean).div_(self.std)  # [B, 3, H, W]
                out = self.model.encode_image(x.to(self.dtype), normalize=True).float()
                return out.cpu().numpy()  # waits for this stream's work; the pinned buffer is free again after it
        finally:
            self.slots.put((host, stream))

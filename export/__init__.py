"""Turning a model from `models/` into graphs that serve fast.

- `python -m export onnx`: one ONNX graph per tower (dynamic batch, L2 normalisation inside), manifest.json,
  and a parity check against eager PyTorch that must pass before the manifest is written.
- `python -m export tensorrt`: TensorRT engines built from an ONNX export, for one GPU model.
- `python -m export verify` / `bench`: parity and throughput of an existing export.
- `export.runtime.load_encoders(dir, backend, device)`: what the service runs.

Importing this package imports neither onnxruntime nor tensorrt; see docs/export.md.
"""

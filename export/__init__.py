"""facemargin export: PyTorch networks to ONNX files that carry their own contract."""

"""facemargin export: PyTorch networks and foreign models (OpenVINO IR, ONNX) to ONNX files
that carry their own contract, with parity checks, threshold calibration, fp16/int8 variants
and the detectors' conversions."""

"""facemargin serving: torch-free image decoding, face detection, alignment and the HTTP API."""

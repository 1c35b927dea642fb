"""The torch-free face core every package uses: decoding untrusted images, face detectors,
alignment templates, the embedder and the contract a model file carries, typed errors.

It takes small typed configs (`DetectorConfig`, explicit decode limits), never the service's
`Settings`, so `training` and `export` use it without the HTTP service."""

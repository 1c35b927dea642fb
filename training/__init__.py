"""facemargin training: data preparation (`prepare`), datasets (`data`), backbones, margin
heads and losses registered in one registry (`registry`), the training loop (`trainer`,
`config`), foreign ONNX networks as trainable modules (`onnx_network`, `warm_start`),
evaluation and scoring, and the loss comparisons (`comparison`, `frozen_trunk`)."""

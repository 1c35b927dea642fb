"""facemargin training: data preparation (`prepare`), datasets (`data`), backbones, margin
heads and losses registered in one registry (`registry`), the training loop (`trainer`,
`config`, `objective`, `held_out`), foreign ONNX networks as trainable modules (`onnx_network`,
`warm_start`), metrics (`evaluation` for verification, `open_set`), plots, scoring, and the
loss comparisons (`comparison`, `frozen_trunk` over a network cut by `trunk`)."""

"""facemargin training: data preparation, backbones, margin heads and losses, evaluation."""

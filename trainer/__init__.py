"""Keras U-Net training, evaluation and inference on datasets written by `benbeam convert`."""

"""Inference: checkpoints, the fusion engine and its backends (torch, ONNX)."""

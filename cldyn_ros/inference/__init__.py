"""Inference: checkpoints, the fusion engine, its backends (torch, ONNX) behind one
interface (:mod:`.backend`), the deployment rewrites of the network (:mod:`.fast`) and ONNX
export."""

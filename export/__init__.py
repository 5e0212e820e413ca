"""PyTorch to ONNX export, graph surgery (the fused FDM op, BN folding) and the bundle writer."""

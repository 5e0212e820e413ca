"""TensorRT and TensorRT-RTX engines built from a bundle's ONNX variants, recorded in its manifest."""

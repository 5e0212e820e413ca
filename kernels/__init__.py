"""The FDM gather-and-multiply: numpy reference, bit packing, the CUDA kernel, its NVRTC loader and TensorRT plugin glue."""

"""The FDM gather-and-multiply: numpy reference (and, later, CUDA source and TensorRT plugin glue)."""

"""Calibration data, FP16 typing, INT8 Q/DQ quantization and parity reports."""

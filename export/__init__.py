"""Export of model packages to ONNX (fp32, fp16, int8) and TensorRT, with parity checks."""

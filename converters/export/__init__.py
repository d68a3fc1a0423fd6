"""Engine writers: one module per target format, all starting from the FP32 ONNX export."""

"""FP32 ONNX encoder -> INT8 artefacts, one module per target (host side).

- ``onnxruntime_qdq``: ONNX Runtime static quantization, QDQ format, per-channel weights.
- ``openvino_nncf``: NNCF post-training quantization to an OpenVINO INT8 IR.
- ``tensorrt_modelopt``: a Q/DQ ONNX from NVIDIA ModelOpt for TensorRT's explicit quantization
  (the engine itself is built on the device).

All three follow ``policy``: only Conv/MatMul/Gemm inputs are quantized. ``float_engines`` makes the
FP32 and FP16 engines; ``registry`` gives every (backend, precision) builder one interface.
"""

"""The path a model takes to a robot: PyTorch -> ONNX -> TensorRT engine / ONNX Runtime session."""

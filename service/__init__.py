"""The inference service: decoding, flow, the exported model in ONNX Runtime, causal scoring."""

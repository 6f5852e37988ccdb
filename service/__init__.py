"""The HTTP service (``amvad serve``): live cameras and uploaded clips scored through the shared runtime
(decode, flow, the exported model in ONNX Runtime, causal scoring), events with evidence and
notifications, the model registry, recordings and fit jobs, Prometheus metrics. ``wiring.py`` builds it;
``api/`` serves it."""

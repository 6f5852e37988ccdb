"""The product CLI (``amvad``): the one entry point on top of training, the service and the benchmark."""

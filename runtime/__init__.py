"""The runtime layer that training and serving share: decoding (``video``), preprocessing, flow over
clips, the exported model, clip windows, causal scoring, events, the inference engine and streams.
It imports ``models`` and nothing above it."""

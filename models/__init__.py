"""Network and flow definitions: pure ``nn.Module``s, no I/O (see ``contract.py``)."""

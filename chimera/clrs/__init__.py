"""CLRS-30 in NumPy / PyTorch: spec table, probes, the instrumented algorithms."""

"""Synthetic corpora with verifiable answers and reasoning traces, and batching for LM training."""

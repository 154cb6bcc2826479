"""Datasets: loaders for each source format, evaluation protocols and the canonical prepared format."""

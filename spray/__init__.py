"""spray: Spectral Relevance Analysis (SpRAY) audits of PyTorch classifiers for Clever Hans behaviour."""

__version__ = "0.1.0"

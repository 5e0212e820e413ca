"""pdsn-deploy: fast, verified deployment of occlusion-robust PDSN face recognition models."""

__version__ = "0.1.0"

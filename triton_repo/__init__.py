"""Triton Inference Server model repositories of a bundle (``pdsn triton-repo``); see ``repository``.

Not named ``triton``: a top-level folder of that name would shadow the Triton compiler package
(``import triton``, which torch probes for) wherever the repository root is on sys.path.
"""

"""Network definitions, checkpoint I/O, the mask dictionary, the 5x5 grid and face alignment.

Only `network`, `checkpoint` and `demo_weights` import torch; everything else here is numpy-only.
"""

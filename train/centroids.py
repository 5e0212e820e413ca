"""The classifier of stage 1 for a network published without its training classifier (dlib's).

Stage 1 scores masked features with the classifier that stage 0 trained beside the network. dlib's
face ResNet was trained with a metric loss and published alone, so its classifier is made from the
training faces instead: one CosFace class per identity, centred on the mean of that identity's clean,
L2-normalised embeddings. The network stays frozen, so these centres are where its own embeddings of
each person lie, and a mask that keeps an occluded face's embedding at its person's centre is what
stage 1 asks for.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pdsn.model.recognition import RecognitionNetwork
from pdsn.train.cosface import MarginCosineProduct
from pdsn.train.data import LabelledFaces
from pdsn.train.features import trunk_features


@torch.no_grad()
def centroid_classifier(model: RecognitionNetwork, faces: LabelledFaces) -> MarginCosineProduct:
    """A CosFace classifier whose class ``i`` is the mean normalised embedding of identity ``i``'s clean faces."""
    if faces.num_classes < 2:
        raise ValueError(f"{faces.source}: {faces.num_classes} identity; stage 1 needs at least 2 to tell people apart")
    embeddings = F.normalize(model.head(trunk_features(model, faces.images)), dim=1)
    labels = torch.from_numpy(np.asarray(faces.labels))
    centres = torch.zeros(faces.num_classes, embeddings.shape[1])
    centres.index_add_(0, labels, embeddings)
    empty = [faces.names[i] for i in range(faces.num_classes) if not (labels == i).any()]
    if empty:
        raise ValueError(f"{faces.source}: no faces of identities {empty}")
    classifier = MarginCosineProduct(embeddings.shape[1], faces.num_classes)
    classifier.weight.copy_(F.normalize(centres, dim=1))
    return classifier.eval()

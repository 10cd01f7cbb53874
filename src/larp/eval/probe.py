"""Class probe: do videos look like their class? A nearest-class-mean classifier on detector features.

Fitted on real training clips only (the gFVD protocol's real clips): every feature dimension is standardised
with those clips' mean and standard deviation, each class is represented by the mean of its standardised
features, and a video is given the class whose mean is nearest (Euclidean distance). The fit has no random
step (nothing to seed): the same features give the same classifier. Applied to generated videos with their
conditioning labels it says whether the samples are recognisable as their class; applied to held-out real
clips it gives the ceiling the same classifier reaches on real data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DESCRIPTION = ("nearest class mean on the detector's features, standardised per dimension with the real "
               "training clips' mean and std; fitted on the gFVD protocol's real (split train) clips; deterministic")


@dataclass
class NearestClassMean:
    shift: np.ndarray  # (d,) training mean
    scale: np.ndarray  # (d,) training std (1 where a dimension is constant)
    classes: np.ndarray  # (k,) class labels, sorted
    means: np.ndarray  # (k, d) class means of the standardised training features

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> NearestClassMean:
        features, labels = np.asarray(features, np.float64), np.asarray(labels)
        if features.ndim != 2 or len(features) != len(labels) or not len(labels):
            raise ValueError(f"class probe: need (n, d) features and n labels, got {features.shape} and {labels.shape}")
        shift, scale = features.mean(0), features.std(0)
        scale = np.where(scale > 0, scale, 1.0)
        z = (features - shift) / scale
        classes = np.unique(labels)
        return cls(shift, scale, classes, np.stack([z[labels == c].mean(0) for c in classes]))

    def predict(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, np.float64) - self.shift) / self.scale
        dist = ((z[:, None, :] - self.means[None]) ** 2).sum(-1)
        return self.classes[dist.argmin(1)]

    def accuracy(self, features: np.ndarray, labels: np.ndarray) -> float | None:
        """Share of ``features`` classified as their ``labels``; None for an empty set."""
        return float((self.predict(features) == np.asarray(labels)).mean()) if len(labels) else None

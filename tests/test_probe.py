"""The class probe (nearest class mean on standardised features) and its held-out clip list."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from larp.eval.probe import NearestClassMean
from larp.eval.protocols import held_out_clips


def test_nearest_class_mean_separates_clusters_and_uses_standardised_distances() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = np.repeat([3, 5, 7], 20)
    feats = centres[np.repeat(np.arange(3), 20)] + rng.normal(0, 1, (60, 2))
    probe = NearestClassMean.fit(feats, labels)
    assert list(probe.classes) == [3, 5, 7]
    assert probe.accuracy(centres + 0.5, [3, 5, 7]) == 1.0
    assert probe.accuracy(centres, [5, 7, 3]) == 0.0 and probe.accuracy(np.zeros((0, 2)), []) is None
    # a dimension with a huge spread but no class information does not swamp the informative one
    two = np.r_[np.zeros(20), np.ones(20) * 3] + rng.normal(0, 0.3, 40)  # informative, small scale
    noisy = np.c_[two, rng.normal(0, 1000, 40)]
    probe = NearestClassMean.fit(noisy, np.repeat([0, 1], 20))
    assert probe.accuracy(np.c_[[0.2, 2.8, 0.1, 3.1], [900, -900, -1500, 1500]], [0, 1, 0, 1]) == 1.0
    with pytest.raises(ValueError, match="class probe"):
        NearestClassMean.fit(feats, labels[:-1])


def test_held_out_clips_are_every_clip_of_the_test_videos() -> None:
    table = pd.DataFrame({"video_id": ["a", "b", "c"], "label": [0, 1, 2], "num_frames": [40, 16, 50],
                          "split1": ["test", "train", "test"], "split2": ["train"] * 3, "split3": ["train"] * 3})
    clips = held_out_clips(table, frames=16, split=1)
    assert clips.to_dict("list") == {"row": [0, 0, 2, 2, 2], "video_id": ["a", "a", "c", "c", "c"],
                                     "start": [0, 16, 0, 16, 32], "label": [0, 0, 2, 2, 2]}
    assert held_out_clips(table, frames=16, split=2).empty

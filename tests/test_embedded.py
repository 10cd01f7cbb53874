"""The embedded dataset: UCF-101 layout, group-based splits, byte-identical from a seed, learnable classes."""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
import pytest

from dataclasses import replace

from larp.config import ParamsError, preset
from larp.data.embedded import CLASSES, class_names, generate_embedded, groups_layout
from larp.data.extract import extract_frames
from larp.files import sha256_file, sha256_tree

NAME = re.compile(r"^v_([A-Za-z]+)_g(\d\d)_c(\d\d)\.avi$")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> tuple[Path, EmbeddedParams]:
    params = preset("tiny").embedded  # 8 classes x (6 train + 2 test), 48x64, the preset used by the pipeline
    out = tmp_path_factory.mktemp("embedded")
    generate_embedded(out, params)
    return out, params


def read_lists(root: Path, k: int) -> tuple[list[tuple[str, int]], list[str]]:
    lists = root / "ucfTrainTestlist"
    train = [
        (ln.split()[0], int(ln.split()[1])) for ln in (lists / f"trainlist0{k}.txt").read_text().splitlines()
    ]
    test = (lists / f"testlist0{k}.txt").read_text().split()
    return train, test


def test_layout_and_lists(embedded):
    root, params = embedded
    class_ind = (root / "ucfTrainTestlist" / "classInd.txt").read_text().splitlines()
    names = [ln.split()[1] for ln in class_ind]
    assert [int(ln.split()[0]) for ln in class_ind] == list(range(1, 9))
    assert names == sorted(names) == class_names(8) and len(set(names)) == 8
    assert all(re.fullmatch(r"[A-Z][a-z]+(?:[A-Z][a-z]+)+", n) for n in names)  # CamelCase like UCF
    assert sorted(p.name for p in (root / "UCF-101").iterdir()) == names

    videos = sorted(p.relative_to(root / "UCF-101").as_posix() for p in (root / "UCF-101").rglob("*"))
    videos = [v for v in videos if v.endswith(".avi")]
    assert len(videos) == 8 * (params.train_per_class + params.test_per_class)
    for v in videos:
        cls, fname = v.split("/")
        m = NAME.match(fname)
        assert m and m.group(1) == cls, v

    test_sets = []
    for k in (1, 2, 3):
        train, test = read_lists(root, k)
        assert sorted([p for p, _ in train] + test) == videos  # every video in exactly one list
        assert len(set(test)) == len(test) == 8 * params.test_per_class
        for path, label in train:
            assert names[label - 1] == path.split("/")[0]  # 1-based classInd label
        # whole groups go to test: no group has clips on both sides
        group = lambda p: (p.split("/")[0], NAME.match(p.split("/")[1]).group(2))
        assert not {group(p) for p in test} & {group(p) for p, _ in train}
        test_sets.append(set(test))
    # split 1 tests on the lowest groups (UCF's g01-g07 convention); the three splits differ
    groups1 = [int(NAME.match(p.split("/")[1]).group(2)) for p in test_sets[0]]
    train1 = [int(NAME.match(p.split("/")[1]).group(2)) for p, _ in read_lists(root, 1)[0]]
    assert max(groups1) < min(train1)
    assert test_sets[0] != test_sets[1] and test_sets[1] != test_sets[2]


def test_videos_are_real_mpeg4_avi(embedded):
    root, params = embedded
    for path in sorted((root / "UCF-101").rglob("*.avi"))[::9]:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            assert c.format.name == "avi" and s.codec_context.name == "mpeg4"
            assert (s.codec_context.width, s.codec_context.height) == (params.width, params.height)
            assert s.average_rate == params.fps
            n = sum(1 for _ in c.decode(s))
        assert params.min_frames <= n <= params.max_frames


def test_build_index_runs_on_it(embedded):
    from larp.data import index

    root, params = embedded
    df = index.build_index(root, progress=False, workers=1)
    assert len(df) == 64
    assert (df["split1"] == "test").sum() == 16 and (df["split2"] == "test").sum() == 16
    assert df["label"].nunique() == 8 and df["num_frames"].between(params.min_frames, params.max_frames).all()
    assert (df["width"] == params.width).all() and (df["height"] == params.height).all()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    small = replace(preset("tiny").embedded, num_classes=2, train_per_class=2, test_per_class=2, min_frames=8, max_frames=10)
    generate_embedded(tmp_path / "a", small)
    generate_embedded(tmp_path / "b", small)
    generate_embedded(tmp_path / "c", replace(small, seed=1))
    assert sha256_tree(tmp_path / "a") == sha256_tree(tmp_path / "b")
    a, c = sorted((tmp_path / "a").rglob("*.avi")), sorted((tmp_path / "c").rglob("*.avi"))
    assert [p.name for p in a] == [p.name for p in c]
    assert all(sha256_file(x) != sha256_file(y) for x, y in zip(a, c))
    # a video does not depend on how many classes there are (definition order picks the subset)
    generate_embedded(tmp_path / "d", replace(small, num_classes=3))
    ball = "UCF-101/BouncingBall/v_BouncingBall_g01_c01.avi"
    assert sha256_file(tmp_path / "a" / ball) == sha256_file(tmp_path / "d" / ball)


def test_classes_are_distinguishable_by_appearance_and_by_motion(embedded):
    """Nearest class mean on split-1 train videos, scored on the test videos: far above chance (1/8)."""
    root, _ = embedded
    train, test = read_lists(root, 1)
    names = class_names(8)
    items = [(p, lab - 1) for p, lab in train] + [(p, names.index(p.split("/")[0])) for p in test]
    app, mot = [], []
    for path, _ in items:
        v = extract_frames(root / "UCF-101" / path, 32).astype(np.float32) / 255
        bright = v.max(-1) > 0.6  # the foreground: backgrounds are dark
        app.append(np.concatenate([v[bright].mean(0), [bright.mean()]]))  # colour + area of the shape
        d = np.abs(np.diff(v, axis=0)).mean(-1)  # t-1 h w motion magnitude
        stats = [d.mean(), (d > 0.1).mean(), np.abs(np.diff(v, 2, axis=0)).mean(), d.mean((1, 2)).std()]
        mot.append(np.log(np.array(stats) + 1e-4))  # how much, how widely, how smoothly it moves
    y = np.array([lab for _, lab in items])
    is_train = np.arange(len(items)) < len(train)
    for feats in (np.stack(app), np.stack(mot)):
        means = np.stack([feats[is_train & (y == c)].mean(0) for c in range(8)])
        pred = np.argmin(((feats[~is_train, None] - means[None]) ** 2).sum(-1), 1)
        assert (pred == y[~is_train]).mean() >= 0.6


def test_groups_layout():
    assert groups_layout(6, 2) == (2, 4, [[1], [2], [3]])
    per, n, tests = groups_layout(3, 1)
    assert (per, n) == (1, 4) and tests == [[1], [2], [3]]
    assert groups_layout(2, 0)[2] == [[], [], []]
    assert groups_layout(4, 4) == (2, 4, [[1, 2], [3, 4], [1, 2]])  # blocks wrap around


def test_bad_params_fail_early(tmp_path):
    with pytest.raises(ParamsError, match="embedded.num_classes"):
        generate_embedded(tmp_path, replace(preset("tiny").embedded, num_classes=13))
    with pytest.raises(ParamsError, match="embedded.height"):
        generate_embedded(tmp_path, replace(preset("tiny").embedded, height=47))
    with pytest.raises(ValueError, match="num_classes"):
        class_names(len(CLASSES) + 1)

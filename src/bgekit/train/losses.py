"""Training scores and losses: pure functions of tensors.

Layout: ``n`` queries, each with a group of ``g`` passages (its positive first), so the
passages tensor has ``n * g`` rows and query ``i``'s positive is passage ``i * g``. Score
matrices are ``(n, n * g)`` (every query against every passage in the batch: in-batch
negatives) unless named *local*, ``(n, g)``. Scores are divided by the temperature by the
caller.

The BGE-M3 unified loss follows the reference implementation's code (which differs from
its paper): ensemble = dense + 0.3 * sparse + multi-vector; loss = (L_dense + L_ensemble +
0.1 * L_sparse + L_multivector) / 4; with self-distillation the ensemble's softmax is the
teacher of each mode and total = (loss + (D_dense + 0.1 * D_sparse + D_multivector) / 3) / 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SPARSE_IN_ENSEMBLE = 0.3
SPARSE_LOSS_WEIGHT = 0.1


def contrastive_loss(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """InfoNCE: cross-entropy of each query's scores with its positive (column ``i * g``) as target."""
    targets = torch.arange(scores.shape[0], device=scores.device) * group_size
    return F.cross_entropy(scores, targets)


def soft_cross_entropy(student: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """``-mean_i sum_j t_ij log softmax(s_i)_j``: the KL divergence from the teacher's
    distribution to the student's, less the teacher's entropy (a constant), so the same
    gradients. This is the reference's ``kl_div`` distillation loss."""
    return -(teacher_probs * torch.log_softmax(student, dim=-1)).sum(dim=-1).mean()


def teacher_distribution(scores: torch.Tensor | None, temperature: float = 1.0) -> torch.Tensor | None:
    """A teacher's per-group scores ``(n, g)`` as the distribution distilled from:
    ``softmax(scores / temperature)``, detached (``None`` without scores)."""
    if scores is None:
        return None
    return torch.softmax(scores.float().detach() / temperature, dim=-1)


def local_scores(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(n, n * g)`` in-batch scores → ``(n, g)``: each query against its own group."""
    n = scores.shape[0]
    grouped = scores.view(n, n, group_size)
    idx = torch.arange(n, device=scores.device)
    return grouped[idx, idx]


def embedder_loss(
    scores: torch.Tensor, group_size: int, teacher_probs: torch.Tensor | None = None
) -> torch.Tensor:
    """InfoNCE over in-batch scores, plus distillation on each query's own group when a
    teacher's probabilities ``(n, g)`` are given."""
    loss = contrastive_loss(scores, group_size)
    if teacher_probs is not None:
        loss = loss + soft_cross_entropy(local_scores(scores, group_size), teacher_probs)
    return loss


def reranker_loss(
    logits: torch.Tensor, group_size: int, teacher_probs: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy over each group's ``g`` logits (positive first), plus distillation."""
    grouped = logits.view(-1, group_size)
    loss = F.cross_entropy(grouped, torch.zeros(grouped.shape[0], dtype=torch.long, device=logits.device))
    if teacher_probs is not None:
        loss = loss + soft_cross_entropy(grouped, teacher_probs)
    return loss


def similarities(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``(n, d) x (m, d) -> (n, m)`` dot products."""
    return q @ p.T


def sparse_vocab_vectors(
    weights: torch.Tensor, input_ids: torch.Tensor, vocab_size: int, special_ids: torch.Tensor
) -> torch.Tensor:
    """Token weights ``(n, L)`` → ``(n, vocab)`` with each token's maximum weight over its
    occurrences and special tokens (including padding) at zero. Differentiable."""
    zeros = torch.zeros(weights.shape[0], vocab_size, dtype=weights.dtype, device=weights.device)
    vocab = zeros.scatter_reduce(1, input_ids, weights, reduce="amax", include_self=True)
    keep = torch.ones(vocab_size, dtype=weights.dtype, device=weights.device)
    keep[special_ids] = 0
    return vocab * keep


def lexical_similarities(q_vocab: torch.Tensor, p_vocab: torch.Tensor) -> torch.Tensor:
    """Lexical matching: sum over shared tokens of query weight x passage weight."""
    return q_vocab @ p_vocab.T


def multivector_similarities(
    q_vecs: torch.Tensor, p_vecs: torch.Tensor, q_mask: torch.Tensor
) -> torch.Tensor:
    """ColBERT MaxSim ``(n, Lq, d) x (m, Lp, d) -> (n, m)``, averaged over the query's real
    vectors (``q_mask`` is the query attention mask without its first position). Padded
    passage vectors are zero, as in the reference, so they score 0 in the max."""
    token = torch.einsum("qid,pjd->qipj", q_vecs, p_vecs)
    best = token.max(dim=-1).values
    best = best * q_mask[:, :, None].to(best.dtype)
    return best.sum(dim=1) / q_mask.sum(dim=1, keepdim=True).to(best.dtype)


@dataclass(frozen=True)
class M3Losses:
    """The parts of the unified loss (for logging) and the total to optimise."""

    total: torch.Tensor
    dense: torch.Tensor
    sparse: torch.Tensor
    multivector: torch.Tensor
    ensemble: torch.Tensor
    self_distill: torch.Tensor | None


def m3_unified_loss(
    dense: torch.Tensor,
    sparse: torch.Tensor,
    multivector: torch.Tensor,
    group_size: int,
    *,
    teacher_probs: torch.Tensor | None = None,
    self_distill: bool = True,
    dense_loss: torch.Tensor | None = None,
) -> M3Losses:
    """BGE-M3's unified fine-tuning loss from the three modes' (temperature-scaled) in-batch
    scores ``(n, n * g)``; see the module docstring for the formula. ``dense_loss``, when
    given (computed with cross-device negatives), replaces the in-batch dense loss."""
    ensemble = dense + SPARSE_IN_ENSEMBLE * sparse + multivector
    l_dense = embedder_loss(dense, group_size, teacher_probs) if dense_loss is None else dense_loss
    l_sparse = embedder_loss(sparse, group_size, teacher_probs)
    l_multi = embedder_loss(multivector, group_size, teacher_probs)
    l_ens = embedder_loss(ensemble, group_size, teacher_probs)
    total = (l_dense + l_ens + SPARSE_LOSS_WEIGHT * l_sparse + l_multi) / 4
    distill = None
    if self_distill:
        teacher = torch.softmax(ensemble.detach(), dim=-1)
        distill = (
            soft_cross_entropy(dense, teacher)
            + SPARSE_LOSS_WEIGHT * soft_cross_entropy(sparse, teacher)
            + soft_cross_entropy(multivector, teacher)
        ) / 3
        total = (total + distill) / 2
    return M3Losses(total, l_dense, l_sparse, l_multi, l_ens, distill)

import math

import numpy as np
import pytest
import torch

from temarec.config import EvalConfig, ModelConfig
from temarec.data.dataset import Dataset
from temarec.evaluation import evaluate, expected_random_mrr, hit_at, metrics_from_ranks, mrr, ndcg_at, rank_split
from temarec.models.base import ModelContext
from temarec.models.pop import RandomModel


def test_metrics_by_hand():
    ranks = np.array([1, 2, 4, 11])
    assert mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 11) / 4)
    assert ndcg_at(ranks, 5) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5)) / 4)
    assert ndcg_at(ranks, 10) == pytest.approx(ndcg_at(ranks, 5))  # rank 11 is outside both
    assert ndcg_at(ranks, 1) == pytest.approx(0.25)
    assert hit_at(ranks, 1) == 0.25 and hit_at(ranks, 5) == 0.75 and hit_at(ranks, 10) == 0.75
    m = metrics_from_ranks(ranks)
    assert set(m) == {"mrr", "ndcg@5", "ndcg@10", "hr@1", "hr@5", "hr@10", "n"} and m["n"] == 4


def test_expected_random_mrr_is_harmonic_over_n():
    assert expected_random_mrr(1000) == pytest.approx(0.0074855, rel=1e-4)


class _Fixed(RandomModel):
    """Scores = a fixed vector per domain, to check ranks by hand."""

    def __init__(self, ctx, scores):
        super().__init__(ModelConfig(name="random"), ctx)
        self.scores = scores

    def score_domain(self, history, domain):
        return self.scores[domain][None, :].expand(history.shape[0], -1)


def test_ranks_by_hand(generated_dataset):
    ds = Dataset.load(generated_dataset)
    ctx = ModelContext(domain_sizes=ds.domain_sizes)
    scores = [torch.arange(n, dtype=torch.float32) for n in ds.domain_sizes]  # local id = score
    r = rank_split(_Fixed(ctx, scores), ds, "test", EvalConfig(), max_len=10)
    frame, neg = ds.test, ds.negatives("test")
    for row in range(0, len(frame), 37):
        d = int(frame["domain"].iloc[row])
        off = ds.domain_offsets[d]
        t = int(frame["target"].iloc[row]) - off
        assert r.full[row] == 1 + (ds.domain_sizes[d] - 1 - t)  # items with a higher local id
        assert r.sampled[row] == 1 + int(((neg[row] - off) > t).sum())


def test_constant_scores_warn_about_ties(generated_dataset, caplog):
    ds = Dataset.load(generated_dataset)
    ctx = ModelContext(domain_sizes=ds.domain_sizes)
    model = _Fixed(ctx, [torch.zeros(n) for n in ds.domain_sizes])
    out = evaluate(model, ds, "valid", EvalConfig(), max_len=10)
    assert out["ties"]["share_rank_gt_ne_ge"] == 1.0
    assert "disagree" in caplog.text
    assert out["sampled"]["Food"]["mrr"] == 1.0  # ">" rank is optimistic under ties: why we warn


def test_random_scorer_sampled_mrr_is_near_chance(generated_dataset):
    ds = Dataset.load(generated_dataset)
    model = RandomModel(ModelConfig(name="random"), ModelContext(domain_sizes=ds.domain_sizes), seed=1)
    ranks = np.concatenate([rank_split(model, ds, s, EvalConfig(), 10).sampled for s in ("valid", "test")] * 1)
    # 600 instances: MRR of uniform ranks on 1..1000 has std ~ 0.03/sqrt(600); allow 4 sigma
    assert abs(mrr(ranks) - expected_random_mrr(1000)) < 4 * 0.0302 / math.sqrt(len(ranks))


def test_ranking_builds_no_autograd_graph(generated_dataset):
    """Evaluation scores under no_grad: a graph per batch would cost memory and disable TEMA's item cache."""
    import torch

    from temarec.config import EvalConfig
    from temarec.data.dataset import Dataset
    from temarec.evaluation import rank_split

    seen = []

    class Probe(torch.nn.Module):
        name = "probe"

        def __init__(self, n: tuple[int, int]):
            super().__init__()
            self.n, self.w = n, torch.nn.Parameter(torch.zeros(1))

        def score_domain(self, history, domain):
            seen.append(torch.is_grad_enabled())
            return torch.zeros(len(history), self.n[domain]) + self.w

    ds = Dataset.load(generated_dataset)
    rank_split(Probe(ds.domain_sizes), ds, "valid", EvalConfig(), 10)
    assert seen and not any(seen)

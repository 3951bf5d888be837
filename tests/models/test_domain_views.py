"""The per-domain views MAN and Tri-CDR read: hand-computed on one row."""

from __future__ import annotations

import torch

from temarec.models.domain_views import domain_view, local_ids, prefix_mean


def test_domain_view_keeps_the_domains_items_in_order_and_points_back_in_time():
    seqs = torch.tensor([[0, 0, 1, 8, 2, 9, 3]])  # Food ids 1..7, Kitchen 8..12
    food = domain_view(seqs, 0, n_first=7)
    assert food.ids.tolist() == [[0, 0, 0, 0, 1, 2, 3]]
    assert food.time[0, -3:].tolist() == [2, 4, 6]  # merged positions of 1, 2, 3
    # latest Food item at or before each merged position: none (a padding slot), then 1, 1, 2, 2, 3
    latest = food.latest[0].tolist()
    assert food.ids[0, latest[0]] == 0 and food.ids[0, latest[1]] == 0
    assert [food.ids[0, i].item() for i in latest[2:]] == [1, 1, 2, 2, 3]
    kitchen = domain_view(seqs, 1, n_first=7)
    assert kitchen.ids.tolist() == [[0, 0, 0, 0, 0, 8, 9]]
    assert local_ids(kitchen.ids, 1, 7).tolist() == [[0, 0, 0, 0, 0, 1, 2]]


def test_prefix_mean_averages_the_valid_rows_so_far():
    x = torch.tensor([[[1.0], [5.0], [3.0]]])
    assert prefix_mean(x, torch.tensor([[False, True, True]]))[0, :, 0].tolist() == [0.0, 5.0, 4.0]

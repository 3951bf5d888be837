"""TEMA, the model: items (eqs. 3-9) -> views x modalities of causal encoders (eqs. 10-11) -> fused scores
(eqs. 12-17), with its own settings (the config section ``model.tema``).

Shape legend (all of models/tema/): B batch, L sequence length, D hidden size (q in the paper), N items of a
domain, M modalities, V views (S^{first}, S^{second}, S^{first+second}), E = V*M encoders, T tags, e a frozen
feature's size, P scored positions, S sampled negatives, U distinct items of a batch.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from temarec.config import ModelConfig
from temarec.models.attention import POSITIONS, StackedEncoders, last_states, next_item_states
from temarec.models.base import ModelContext, SequentialModel
from temarec.models.softmax import describe_loss, full_log_prob, sampled_log_prob
from temarec.models.tema.encoders import view_gather, view_starts
from temarec.models.tema.explain import describe_sources, explain
from temarec.models.tema.heads import (FUSION_SPEED, MIN_TEMPERATURE, HeadParts, LearnedFusion, modality_weights,
                                      view_weights)
from temarec.models.tema.items import CONTENT, MODALITIES, ItemEmbeddings, usable_modalities

log = logging.getLogger(__name__)

TIE_BREAK_SEED, TIE_BREAK_SCALE = 2022, 1e-3  # log-score jitter ordering otherwise exactly tied items
SCORE_ROWS = 128  # histories score_domain sums the heads for at once ((rows, N) buffers of a few MB)


@dataclass(frozen=True)
class TemaSettings:
    """TEMA's own settings, the config section ``model.tema`` (Sec. III-E/F; readings in docs/DESIGN.md)."""

    alpha: tuple[float, float, float] = (0.4, 0.2, 0.2)  # ID, image, text; tag gets 1 - sum, eq. (13)
    lambdas: tuple[float, float] = (0.3, 0.1)  # lambda1 (other view), lambda2 (merged view), eqs. (15)-(16)
    temperature: float = 0.1  # softmax temperature over cosines, eqs. (12)-(13)
    learn_temperature: bool = True
    similarity: str = "cosine"  # Sim of eqs. (12)-(13): cosine (paper) | dot (h . e / tau, norms kept; opt-in)
    modalities: tuple[str, ...] = ("id", "img", "txt", "tag")
    views: str = "multi"  # multi = S^X, S^Y, S^{X+Y}; merged = one S^{X+Y} encoder (Table IV ablation)
    view_reading: str = "target"  # target: X = the target's domain (symmetric); fixed: X = first domain
    sampled_correction: bool = True  # sampled loss (model.loss): + log((N - 1) / S) on negatives (calibrated P_m)
    # what eq. (14) trains: mixture = log of the alpha-fused probability (paper); separate = alpha-weighted sum of
    # each modality head's own log-likelihood (every head fully trained; docs/DESIGN.md, "Training loss")
    head_loss: str = "mixture"
    # Where TEMA and SASRec differ beyond the modalities, views and head (docs/DESIGN.md, "TEMA as SASRec"); the
    # defaults are TEMA's. configs/tema-as-sasrec.yaml sets the other side of each, which makes TEMA compute SASRec.
    item_fusion: bool = True  # eq. (9)'s e_item added to every encoder's input; off: e_m alone
    positions: str = "oldest"  # oldest: rank from the oldest item (causal in training); newest: SASRec's columns
    cold_ids: str = "zero"  # zero: items never trained have no ID vector (+ a tie-break jitter); learn: keep rows
    empty_state: str = "learned"  # a view with no item yet: learned vector; encoded: the encoder's padding state
    # separate: V*M independent encoders (paper); shared: one encoder's linear weights shared by all of them, each
    # (view, modality) adapting them with a rank-lora_rank LoRA term scaled by lora_alpha / lora_rank (our addition,
    # issue 14; docs/DESIGN.md, "Shared encoders")
    encoders: str = "separate"
    lora_rank: int = 8
    lora_alpha: float = 8.0
    # fixed = the paper's alpha and lambdas in eqs. (13)-(16); learned = softmax weights per target domain that start
    # at them and are trained as the mixture weights of eq. (16) (our addition; docs/DESIGN.md, "Learned fusion")
    # validated = the paper's weights in training, then per target domain fitted on the validation split (the
    # same weights as learned; docs/DESIGN.md, "Validated fusion")
    fusion: str = "fixed"
    # what validated fusion maximises on the validation split: likelihood = eq. (16)'s mixture likelihood of the
    # targets; mrr = the sampled protocol's MRR (the harness's selection metric), by a grid over the weights (ours)
    fusion_fit: str = "likelihood"

    def __post_init__(self) -> None:
        def check(condition: bool, message: str) -> None:
            if not condition:
                raise ValueError(message)

        check(len(self.alpha) == 3 and all(a >= 0 for a in self.alpha) and sum(self.alpha) <= 1.0 + 1e-9,
              f"model.tema.alpha needs three non-negative weights summing to <= 1, got {self.alpha}")
        check(len(self.lambdas) == 2 and all(v >= 0 for v in self.lambdas),
              f"model.tema.lambdas needs two non-negative weights, got {self.lambdas}")
        check(self.temperature > 0, "model.tema.temperature must be > 0")
        check(set(self.modalities) <= set(MODALITIES) and len(self.modalities) >= 1,
              f"model.tema.modalities must be a non-empty subset of id, img, txt, tag; got {self.modalities}")
        check(self.views in {"multi", "merged"}, f"model.tema.views must be multi or merged, got {self.views!r}")
        check(self.view_reading in {"target", "fixed"},
              f"model.tema.view_reading must be target or fixed, got {self.view_reading!r}")
        check(self.similarity in {"cosine", "dot"},
              f"model.tema.similarity must be cosine or dot, got {self.similarity!r}")
        check(self.head_loss in {"mixture", "separate"},
              f"model.tema.head_loss must be mixture or separate, got {self.head_loss!r}")
        check(self.positions in POSITIONS, f"model.tema.positions must be oldest or newest, got {self.positions!r}")
        # a single-domain view's state at merged step t sits at its latest item <= t; counted from the newest
        # column, or read off the padding slot before its first item, it would encode how many items of that
        # domain come later in the training sequence: the target's domain (docs/DESIGN.md, "Positions")
        check(self.views == "merged" or (self.positions == "oldest" and self.empty_state == "learned"),
              "model.tema.positions=newest and model.tema.empty_state=encoded leak the future with views=multi "
              "(see docs/DESIGN.md, Positions); use them with model.tema.views=merged only")
        check(self.cold_ids in {"zero", "learn"}, f"model.tema.cold_ids must be zero or learn, got {self.cold_ids!r}")
        check(self.empty_state in {"learned", "encoded"},
              f"model.tema.empty_state must be learned or encoded, got {self.empty_state!r}")
        check(self.encoders in {"separate", "shared"},
              f"model.tema.encoders must be separate or shared, got {self.encoders!r}")
        check(self.lora_rank >= 1, f"model.tema.lora_rank must be >= 1, got {self.lora_rank}")
        check(self.lora_alpha > 0, f"model.tema.lora_alpha must be > 0, got {self.lora_alpha}")
        check(self.fusion in {"fixed", "learned", "validated"},
              f"model.tema.fusion must be fixed, learned or validated, got {self.fusion!r}")
        check(self.fusion_fit in {"likelihood", "mrr"},
              f"model.tema.fusion_fit must be likelihood or mrr, got {self.fusion_fit!r}")
        check(self.fusion_fit == "likelihood" or self.fusion == "validated",
              "model.tema.fusion_fit=mrr chooses the weights of fusion=validated; set model.tema.fusion=validated")
        check(self.fusion == "fixed" or self.views == "multi" or len(self.modalities) > 1,
              f"model.tema.fusion={self.fusion} has no weight to learn with one view (views=merged) and one "
              "modality; use fusion=fixed or add a modality")

    def check_with(self, model: ModelConfig) -> None:
        """What needs the shared model settings too (ModelConfig calls it for the selected model's section)."""
        if self.encoders == "shared" and self.lora_rank > model.dim:
            raise ValueError(f"model.tema.lora_rank ({self.lora_rank}) must be <= model.dim ({model.dim}): a rank "
                             "above the hidden size adds nothing a full-rank adapter would not")


class TEMA(SequentialModel):
    """Items (eqs. 3-9) -> three views x M modalities of causal encoders (eqs. 10-11) -> fused scores (12-17)."""

    name = "tema"
    settings_class = TemaSettings
    not_factorizable = ("combines several sequence views and modalities per domain, which one state vector and one "
                        "item matrix cannot express, so ONNX export is not supported")
    settings: TemaSettings

    def __init__(self, cfg: ModelConfig, ctx: ModelContext):
        super().__init__(cfg, ctx)
        s = self.settings
        self.modalities = tuple(m for m in MODALITIES if m in ctx.extras.get("modalities", s.modalities))
        missing = [m for m in self.modalities if (m in CONTENT and m not in ctx.extras.get("features", {}))
                   or (m == "tag" and "tag_vectors" not in ctx.extras)]
        if missing:
            raise ValueError(f"TEMA needs {missing} in ctx.extras (built by TEMA.context_extras from the dataset "
                             "folder); run `temarec features` / `temarec tags`, or drop them from model.tema.modalities")
        self.alpha = modality_weights(s.alpha, self.modalities)
        self.n_views = 3 if s.views == "multi" else 1
        V, M, D = self.n_views, len(self.modalities), cfg.dim
        self.register_buffer("log_alpha", torch.log(torch.tensor([self.alpha[m] for m in self.modalities])),
                             persistent=False)  # (M,) the paper's alpha, eq. (13)
        if s.fusion != "fixed":
            self.fusion = LearnedFusion(self.paper_view_weights(), self.log_alpha.exp())
        self.items = ItemEmbeddings(D, ctx, self.modalities, fuse=s.item_fusion, zero_cold=s.cold_ids == "zero")
        self._item_cache: dict[int, torch.Tensor] = {}  # domain -> (M, N, D) while frozen, see domain_items
        self.register_buffer("input_scale", torch.tensor([D ** 0.5 if m == "id" else 1.0 for m in self.modalities]),
                             persistent=False)  # (M,) see encode
        lora = (s.lora_rank, s.lora_alpha) if s.encoders == "shared" else None
        self.encoders = StackedEncoders(V * M, D, cfg.heads, cfg.layers, cfg.dropout, ctx.max_len, s.positions, lora)
        if s.empty_state == "learned":
            self.h_empty = nn.Parameter(torch.randn(V, M, D) * 0.02)  # state of a view with no item yet
        # Items that carry no information (never trained, no text, no tags) get identical scores; a fixed random
        # jitter (<= 0.1% of the probability) orders them at random instead, so that the sampled
        # protocol's ">" rank is not optimistic for them (as pop does; see docs/DESIGN.md, "Data and evaluation").
        # Kept ID rows (cold_ids = learn) leave no item information-free: no jitter then.
        g = torch.Generator().manual_seed(TIE_BREAK_SEED)
        jitter = TIE_BREAK_SCALE if s.cold_ids == "zero" else 0.0
        self.register_buffer("tie_break", jitter * torch.rand(ctx.n_items, generator=g),
                             persistent=False)  # (n,) added to log-scores: a factor of at most 1.001
        log_tau = torch.full((V, M), math.log(s.temperature))  # one temperature per (view, modality)
        if s.learn_temperature:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)

    # ---- inputs --------------------------------------------------------------------------------------------
    def views(self, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sec. III-A/F: seqs (B, L) merged history -> view_ids, last, has, each (V, B, L) (see view_gather)."""
        real = seqs > 0
        second = seqs > self.ctx.domain_sizes[0]
        keeps = [real & ~second, real & second, real] if self.n_views == 3 else [real]  # S^X, S^Y, S^{X+Y}
        return tuple(torch.stack(t) for t in zip(*(view_gather(seqs, k) for k in keeps)))  # type: ignore[return-value]

    def encode(self, view_ids: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
        """view_ids (V, B, L) -> per view v, (h (M, B, L_v, D), L - L_v): the view's sequences through each
        modality's encoder, at the view's own length L_v (its last L_v columns, see ``view_starts``)."""
        M = len(self.modalities)
        uniq, inv = torch.unique(view_ids, return_inverse=True)  # each distinct item embedded once
        vecs, fused = self.items(uniq)  # (M, U, D), (U, D)
        # F_m = e_m + e_item (eq. 9 feeds every encoder); e_id enters times sqrt(D), as SASRec's item embedding
        f = vecs * self.input_scale[:, None, None]
        f = f if fused is None else f + fused  # (M, U, D)
        out = []
        for v, start in enumerate(view_starts(view_ids, self.settings.empty_state == "encoded")):
            ids = inv[v, :, start:]  # (B, L_v)
            valid = (view_ids[v, :, start:] > 0).expand(M, -1, -1)  # (M, B, L_v)
            out.append((self.encoders(f[:, ids], valid, slice(v * M, (v + 1) * M)), start))  # eqs. (10)-(11)
        return out

    # ---- eqs. (12)-(13) ------------------------------------------------------------------------------------
    def scaled(self, h: torch.Tensor) -> torch.Tensor:
        """h (V, M, P, D) -> the query side of eqs. (12)-(13): h / (||h|| tau_{v,m}) for ``cosine`` (a dot product
        with a unit item vector is then cos / tau); h / tau_{v,m} for ``dot``."""
        tau = self.log_tau.exp().clamp(min=MIN_TEMPERATURE)[:, :, None, None]
        return (F.normalize(h, dim=-1) if self.settings.similarity == "cosine" else h) / tau

    def candidates(self, items: torch.Tensor) -> torch.Tensor:
        """The item side of eqs. (12)-(13): unit rows for ``cosine``, the vectors themselves for ``dot``."""
        return F.normalize(items, dim=-1) if self.settings.similarity == "cosine" else items

    def logits(self, h: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """Sim(h, E_m) over the temperature: h (V, M, P, D), cand (M, C, D) -> (V, M, P, C)."""
        return torch.einsum("vmpd,mcd->vmpc", self.scaled(h), self.candidates(cand))

    def domain_items(self, domain: int) -> torch.Tensor:
        """(M, N, D) per-modality item matrices E_m^{domain} of eqs. (12)-(13).

        Cached while the model is frozen (eval mode, no gradient): evaluation and serving score many histories
        against the same matrices. ``train()`` and loading weights clear the cache.
        """
        frozen = not self.training and not torch.is_grad_enabled()  # eval(), under no_grad or inference_mode
        if frozen and domain in self._item_cache:
            return self._item_cache[domain]
        sl = self.ctx.domain_slice(domain)
        matrix = self.items(torch.arange(sl.start, sl.stop, device=self.log_alpha.device), fuse=False)[0]
        if frozen:
            self._item_cache[domain] = matrix
        return matrix

    def domain_candidates(self, domain: int) -> torch.Tensor:
        """(M, N, D) ``candidates(domain_items(domain))``, the item side of eqs. (12)-(13); cached like it (the
        normalisation of every row costs more than scoring one history against them)."""
        frozen = not self.training and not torch.is_grad_enabled()
        key = -1 - domain  # beside domain_items' entries in the same cache, cleared with them
        if frozen and key in self._item_cache:
            return self._item_cache[key]
        cand = self.candidates(self.domain_items(domain))
        if frozen:
            self._item_cache[key] = cand
        return cand

    def train(self, mode: bool = True) -> "TEMA":
        self._item_cache.clear()
        return super().train(mode)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._item_cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "TEMA":  # .to(device), .double(), ...
        self._item_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def head_log_prob(self, log_p: torch.Tensor, log_alpha: torch.Tensor) -> torch.Tensor:
        """What eq. (14) maximises per view: log_p (V, M, P) log P_m^V(target), log_alpha (M,) -> (V, P).

        ``mixture`` (the paper's eqs. 13-14): log sum_m alpha_m P_m, the log of the fused probability.
        ``separate``: sum_m alpha_m log P_m, each head's own log-likelihood weighted by alpha_m; a lower bound
        of the mixture's (Jensen), whose gradient reaches every head in full instead of in proportion to how
        well it already predicts the target (see docs/DESIGN.md, "Training loss"). Scores are eq. (16) either way.
        There alpha multiplies loss terms, so it is always the paper's: a learned one would shrink the largest.
        """
        if self.settings.head_loss == "separate":
            return (self.log_alpha.exp()[None, :, None] * log_p).sum(1)
        return torch.logsumexp(log_alpha[None, :, None] + log_p, dim=1)

    # ---- eqs. (14)-(17) ------------------------------------------------------------------------------------
    def training_loss(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs (B, L+1) -> scalar: eq. (15) summed over every next-item position, divided by their number."""
        h, targets = next_item_states(seqs, self.position_states, dim=2)  # (V, M, P, D), (P,)
        total = h.sum() * 0.0  # keeps the graph connected when a batch has nothing to predict
        for d in (0, 1):
            rows = torch.nonzero(targets > self.ctx.domain_sizes[0] if d else targets <= self.ctx.domain_sizes[0],
                                 as_tuple=True)[0]
            if len(rows) == 0:
                continue
            local = targets[rows] - self.ctx.domain_slice(d).start  # (P_d,)
            heads = self._domain_log_prob(h[:, :, rows], local, d)  # (V, M, P_d) log P_m^V(target)
            log_w, log_a = self.fusion_weights(d)  # (V,), (M,)
            log_p = self.head_log_prob(heads, log_a)  # (V, P_d)
            w = torch.tensor(view_weights(self.settings.views, self.settings.view_reading, self.settings.lambdas, d),
                             device=h.device)  # (V,) eq. (15): 1, lambda1, lambda2 (the paper's even when learned)
            total = total - (w[:, None] * log_p).sum()  # eq. (14) per view
            if self.settings.fusion == "learned":
                # the weights are trained only where they sit inside a mixture: -log of eq. (16)'s score normalised
                # to a distribution, over heads held fixed (docs/DESIGN.md, "Learned fusion")
                terms = (log_w[:, None] + log_a[None, :])[:, :, None] + heads.detach()  # (V, M, P_d)
                total = total - (terms.logsumexp((0, 1)) - self.fusion.log_total[d]).sum()
        return total / max(1, len(targets))

    def _domain_log_prob(self, h: torch.Tensor, local: torch.Tensor, domain: int) -> torch.Tensor:
        """h (V, M, P, D), local (P,) targets of ``domain`` -> log P_m^V(target) (V, M, P), full or sampled."""
        n, hs = self.ctx.domain_sizes[domain], self.scaled(h)
        distinct = self.n_views > 1  # the other domain's view repeats its state over a run of this domain's items
        if self.cfg.loss == "sampled" and self.cfg.num_sampled < n:
            # the softmax over the target and S shared negatives drawn from its domain (docs/DESIGN.md);
            # model.tema.sampled_correction calibrates P_m like the full softmax's (eq. 13 mixes probabilities)
            return sampled_log_prob(hs, lambda ids: self.candidates(self.items(ids, fuse=False)[0]), local, n,
                                    self.ctx.domain_slice(domain).start, self.cfg.num_sampled,
                                    self.settings.sampled_correction,
                                    self.ctx.negative_log_q(domain, self.cfg.negative_power, h.device),
                                    distinct)
        return full_log_prob(hs, self.candidates(self.domain_items(domain)), local, distinct)

    def position_states(self, seqs: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """seqs (B, L), at (B, L) bool -> h (V, M, P, D): each view's state after the items up to each of the P
        positions where ``at`` is True, in row-major order (eq. 11).

        A view's encoder runs once over the view's own sequence; the state for merged position t is its output
        at the view's latest item at or before t (causal), or the learned empty state when there is none yet.
        """
        view_ids, last, has = self.views(seqs)  # (V, B, L)
        b, t = at.nonzero(as_tuple=True)  # (P,) each
        states = []
        for v, (H, start) in enumerate(self.encode(view_ids)):  # H (M, B, L_v, D)
            M, B, L_v, D = H.shape
            slot = b * L_v + (last[v, b, t] - start).clamp(min=0)  # (P,) the view's latest item at or before t
            states.append(H.reshape(M, B * L_v, D).index_select(1, slot))  # (M, P, D)
        h = torch.stack(states)  # (V, M, P, D)
        if self.settings.empty_state == "encoded":  # the encoder's state at the view's padding slot (SASRec's)
            return h
        return torch.where(has[:, b, t][:, None, :, None], h, self.h_empty[:, :, None])

    def final_states(self, history: torch.Tensor) -> torch.Tensor:
        """history (B, L) -> h (V, M, B, D): each view's state after the most recent item."""
        return last_states(history, self.position_states, dim=2)

    def modality_probs(self, history: torch.Tensor, domain: int, local: torch.Tensor | None = None) -> torch.Tensor:
        """(M, B, K) weighted sum over views of alpha_m P_m^V (eqs. 13, 16); K = all items, ``local`` (K,) items
        of every row, or ``local`` (B, K) items of each row."""
        terms = self.weighted_head_log_probs(self.head_log_probs(history, domain), domain)  # (V, M, B, N)
        if local is not None:
            terms = terms[..., local] if local.dim() == 1 else terms.gather(-1, local.expand(*terms.shape[:2], -1, -1))
        return terms.exp().sum(0)

    def score_domain(self, history: torch.Tensor, domain: int) -> torch.Tensor:
        """eqs. (16)-(17): log(P^X + lambda1 P^Y + lambda2 P^{X+Y}) over the target domain's items, (B, N).

        The log of the paper's score ranks identically, and computed as a log-sum-exp of log-softmaxes it does
        not underflow: sharp heads (learned temperatures) give many items a probability of exactly 0 in float32,
        which would tie them with the target and make the sampled protocol's ">" rank optimistic. The heads are
        summed one at a time over SCORE_ROWS histories at once: the same sum as ``fuse_heads(head_log_probs)``
        without its (V, M, B, N) tensors, which set the peak RSS and made C2DSR's validation slower than an epoch.
        With a single head (one view, one modality) the scores are its logits Sim / tau: the same ranking as its
        log-softmax, and, for the ID-only merged dot-product head, exactly SASRec's scores.
        """
        return self.score_parts(history, domain)[0]

    def score_parts(self, history: torch.Tensor, domain: int) -> tuple[torch.Tensor, HeadParts]:
        """``score_domain``'s scores (B, N) and the parts of them that ``explain`` reuses (no second pass)."""
        h = self.scaled(self.final_states(history))  # (V, M, B, D)
        cand = self.domain_candidates(domain)  # (M, N, D)
        log_w = self.log_head_weights(domain)  # (V, M)
        heads = [(v, m) for v in range(log_w.shape[0]) for m in range(log_w.shape[1]) if log_w[v, m] > -math.inf]
        tie = self.domain_tie_break(domain)  # (N,)
        log_norm = h.new_zeros(h.shape[:3])  # (V, M, B) log sum_c exp(Sim / tau); 0 for heads left out
        rows = []
        for s in range(0, h.shape[2], SCORE_ROWS):
            total = None
            for v, m in heads:
                z = h[v, m, s:s + SCORE_ROWS] @ cand[m].T  # (r, N) Sim / tau, eq. (12)
                lse = z.logsumexp(-1)  # (r,)
                log_norm[v, m, s:s + SCORE_ROWS] = lse
                if len(heads) > 1:  # one head: its normaliser is a per-row constant, so Sim / tau ranks the same
                    z = z - (lse[:, None] - log_w[v, m])  # log(w_V alpha_m P_m^V), eqs. (13), (16)
                total = z if total is None else torch.logaddexp(total, z)
            rows.append(total + tie)  # type: ignore[operator]
        return torch.cat(rows), HeadParts(h, log_norm)

    def paper_view_weights(self) -> torch.Tensor:
        """(2, V) the paper's view weights w_V (1, lambda1, lambda2; eqs. 15-16) when domain 0 or 1 is the target."""
        s = self.settings
        return torch.tensor([view_weights(s.views, s.view_reading, s.lambdas, d) for d in (0, 1)])

    def fusion_weights(self, domain: int) -> tuple[torch.Tensor, torch.Tensor]:
        """log w_V (V,) and log alpha_m (M,) of eq. (16) for target ``domain``: the paper's (``model.tema.fusion =
        fixed``) or the learned / validated ones."""
        if self.settings.fusion != "fixed":
            return self.fusion(domain)
        w = view_weights(self.settings.views, self.settings.view_reading, self.settings.lambdas, domain)
        return torch.tensor([math.log(x) if x > 0 else -math.inf for x in w], device=self.log_alpha.device), \
            self.log_alpha

    def log_head_weights(self, domain: int, views: list[int] | None = None, modalities: list[int] | None = None,
                         weights: list[float] | None = None) -> torch.Tensor:
        """(V, M) log(w_V alpha_m): the weight of each head in eq. (16), -inf for the heads left out.

        Views or modalities left out of ``views`` / ``modalities`` (indices; None = all) get weight 0.
        ``weights`` replaces the view weights w_V (a diagnostic: re-weighting a trained model's views).
        """
        log_w, log_a = self.fusion_weights(domain)  # (V,), (M,)
        if weights is not None:
            log_w = torch.tensor([math.log(x) if x > 0 else -math.inf for x in weights], device=log_a.device)
        dev = log_a.device
        log_w = log_w.masked_fill(torch.tensor([views is not None and v not in views for v in range(len(log_w))],
                                               device=dev), -math.inf)
        log_a = log_a.masked_fill(torch.tensor([modalities is not None and m not in modalities
                                                for m in range(len(log_a))], device=dev), -math.inf)
        return log_w[:, None] + log_a[None, :]

    def learned_summary(self) -> dict[str, Any]:
        """With ``model.tema.fusion = learned | validated``: the fitted weights of eq. (16) for reports, per target
        domain each view's w_V (on the paper's scale, 1 + lambda1 + lambda2 in all) and each modality's alpha_m."""
        if self.settings.fusion == "fixed":
            return {}
        d0, d1 = self.ctx.domains
        names = [d0, d1, f"{d0}+{d1}"] if self.n_views == 3 else [f"{d0}+{d1}"]
        out = {}
        with torch.no_grad():
            for d, target in enumerate(self.ctx.domains):
                log_w, log_a = self.fusion(d)
                out[f"{target} target"] = {"views": {n: round(float(x), 4) for n, x in zip(names, log_w.exp())},
                                           "modalities": {m: round(float(x), 4)
                                                          for m, x in zip(self.modalities, log_a.exp())}}
        return {"fusion": out}

    @torch.no_grad()
    def target_head_log_probs(self, history: torch.Tensor, domain: int, target: torch.Tensor) -> torch.Tensor:
        """log P_m^V(target) (V, M, B) of every head over the domain's whole catalogue (eqs. 12-13), for histories
        (B, L) and their targets (B,) (local indices in ``domain``)."""
        return self.candidate_head_log_probs(history, domain, target[:, None])[..., 0]

    @torch.no_grad()
    def candidate_head_log_probs(self, history: torch.Tensor, domain: int, items: torch.Tensor,
                                 rows: int = 64) -> torch.Tensor:
        """log P_m^V(item) (V, M, B, K) of every head over the domain's whole catalogue (eqs. 12-13), for histories
        (B, L) and K items each (B, K) (local indices in ``domain``); ``rows`` histories at a time."""
        parts = self.score_parts(history, domain)[1]  # each head's scaled state (V, M, B, D) and log-normaliser
        cand = self.domain_candidates(domain)  # (M, N, D)
        out = []
        for start in range(0, history.size(0), rows):
            b = slice(start, start + rows)
            picked = torch.einsum("vmbd,mbkd->vmbk", parts.states[:, :, b], cand[:, items[b]])  # Sim / tau
            out.append(picked - parts.log_norm[:, :, b, None])
        return torch.cat(out, 2)

    def fit_on_validation(self, batches: Iterable[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]]) -> bool:
        """``model.tema.fusion = validated``: fit eq. (16)'s view and modality weights, per target domain, to the
        validation split (docs/DESIGN.md, "Validated fusion"). ``batches`` yields (histories (B, L), target domain,
        targets (B,), the sampled protocol's negatives (B, C); local indices). Returns whether anything was fitted
        (the run layer then saves the weights)."""
        if self.settings.fusion != "validated":
            return False
        self.eval()
        fresh = LearnedFusion(self.paper_view_weights(), self.log_alpha.exp().cpu())  # start at the paper's weights,
        with torch.no_grad():  # whatever the checkpoint holds: the fit does not depend on an earlier one
            self.fusion.view_logits.copy_(fresh.view_logits)
            self.fusion.alpha_logits.copy_(fresh.alpha_logits)
        by_mrr = self.settings.fusion_fit == "mrr"
        heads: dict[int, list[torch.Tensor]] = {0: [], 1: []}
        jitter: dict[int, list[torch.Tensor]] = {0: [], 1: []}
        for history, domain, target, negatives in batches:  # the heads come without graphs: held fixed below
            if by_mrr:  # the target (column 0) and its stored negatives, as the sampled protocol ranks them
                items = torch.cat([target[:, None], negatives], 1)  # (B, 1 + C)
                heads[domain].append(self.candidate_head_log_probs(history, domain, items))  # (V, M, B, 1 + C)
                jitter[domain].append(self.domain_tie_break(domain)[items])  # (B, 1 + C)
            else:
                heads[domain].append(self.target_head_log_probs(history, domain, target))  # (V, M, B)
        for d, parts in heads.items():
            if parts and by_mrr:
                self._fit_fusion_mrr(d, torch.cat(parts, 2), torch.cat(jitter[d], 0))
            elif parts:
                self._fit_fusion(d, torch.cat(parts, 2))
        self._item_cache.clear()
        return True

    @torch.no_grad()
    def _fit_fusion_mrr(self, domain: int, heads: torch.Tensor, jitter: torch.Tensor, step: float = 0.1,
                        rounds: int = 2) -> None:
        """``fusion_fit = mrr``: the view and modality weights of target ``domain`` that maximise the sampled MRR
        of the fused score over heads (V, M, B, 1 + C) log P_m^V (column 0 the target, ranked by ">" as the
        evaluation does, ``jitter`` (B, 1 + C) its tie-break). Alternates a grid over the modality simplex (views
        held) and one over the view simplex (modalities held), ``step`` apart, ``rounds`` times, from the paper's
        weights; only a strictly better MRR moves them. Weights the paper sets to 0 stay 0."""
        log_w, log_a = (t.detach().clone() for t in self.fusion(domain))  # (V,), (M,) the paper's
        log_w = log_w - self.fusion.log_total[domain]  # on the simplex; the fused score's scale never ranks

        def mrr(terms: torch.Tensor, log_weights: torch.Tensor) -> float:
            score = (log_weights[:, None, None] + terms).logsumexp(0) + jitter  # (B, 1 + C)
            rank = 1 + (score[:, 1:] > score[:, :1]).sum(1)
            return float((1.0 / rank).mean())

        def by_modality() -> torch.Tensor:  # (M, B, K): each modality's heads mixed over the held view weights
            return (log_w[:, None, None, None] + heads).logsumexp(0)

        def by_view() -> torch.Tensor:  # (V, B, K): each view's heads mixed over the held modality weights
            return (log_a[None, :, None, None] + heads).logsumexp(1)

        best = start = mrr(by_modality(), log_a)
        for _ in range(rounds):
            for weights, mixed in ((log_a, by_modality), (log_w, by_view)):
                terms = mixed()
                for point in simplex_grid(int(torch.isfinite(weights).sum()), step):
                    trial = torch.full_like(weights, -math.inf)
                    trial[torch.isfinite(weights)] = torch.tensor(point, dtype=weights.dtype).clamp(min=1e-6).log()
                    value = mrr(terms, trial)
                    if value > best:
                        best = value
                        weights.copy_(trial)
        off_w, off_a = self.fusion.view_off[domain], self.fusion.alpha_off[domain]
        self.fusion.view_logits[domain] = log_w.masked_fill(off_w, 0.0) / FUSION_SPEED
        self.fusion.alpha_logits[domain] = log_a.masked_fill(off_a, 0.0) / FUSION_SPEED
        log.info("validated fusion (mrr), %s target: validation sampled MRR %.4f -> %.4f", self.ctx.domains[domain],
                 start, best)

    def _fit_fusion(self, domain: int, heads: torch.Tensor) -> None:
        """Maximise the validation likelihood of eq. (16)'s normalised mixture, -mean log sum_{V,m} (w_V / s) alpha_m
        P_m^V(target), over target ``domain``'s weights only (heads (V, M, B) held fixed); L-BFGS, a few dozen
        steps: 2 (V + M) numbers against thousands of targets."""
        params = [self.fusion.view_logits, self.fusion.alpha_logits]
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            log_w, log_a = self.fusion(domain)
            terms = (log_w[:, None] + log_a[None, :])[:, :, None] + heads  # (V, M, B)
            loss = -(terms.logsumexp((0, 1)) - self.fusion.log_total[domain]).mean()
            loss.backward()
            return loss

        with torch.enable_grad():
            before = closure().item()
            opt.step(closure)
            after = closure().item()
        log.info("validated fusion, %s target: validation log-likelihood %.4f -> %.4f", self.ctx.domains[domain],
                 -before, -after)
        for p in params:
            p.grad = None

    def weighted_head_log_probs(self, heads: torch.Tensor, domain: int, views: list[int] | None = None,
                                modalities: list[int] | None = None,
                                weights: list[float] | None = None) -> torch.Tensor:
        """heads (V, M, B, N) log P_m^V -> log(w_V alpha_m P_m^V), the terms of eq. (16) (see log_head_weights)."""
        return heads + self.log_head_weights(domain, views, modalities, weights)[:, :, None, None]

    def fuse_heads(self, heads: torch.Tensor, domain: int, views: list[int] | None = None,
                   modalities: list[int] | None = None, weights: list[float] | None = None) -> torch.Tensor:
        """heads (V, M, B, N) -> (B, N) log sum over the kept heads of w_V alpha_m P_m^V, plus the tie-break."""
        terms = self.weighted_head_log_probs(heads, domain, views, modalities, weights)
        return terms.flatten(0, 1).logsumexp(0) + self.domain_tie_break(domain)  # (B, N)

    def domain_tie_break(self, domain: int) -> torch.Tensor:
        """(N,) the jitter added to ``domain``'s log-scores: it breaks exact ties among information-free items
        (float32 log-scores of size ~10-100 resolve ~1e-5)."""
        sl = self.ctx.domain_slice(domain)
        return self.tie_break[sl.start - 1:sl.stop - 1]

    def head_log_probs(self, history: torch.Tensor, domain: int) -> torch.Tensor:
        """log P_m^V over the target domain's items for every (view, modality) head, (V, M, B, N) (eqs. 12-13).

        What each of the V*M heads predicts on its own; ``benchmarks/tema_heads.py`` ranks with each of them.
        """
        return self.logits(self.final_states(history), self.domain_items(domain)).log_softmax(-1)  # each view's tau

    @torch.no_grad()
    def explain(self, history: torch.Tensor, domain: int, local_item_ids: list[list[int]], top_tags: int = 5,
                parts: HeadParts | None = None) -> list[list[dict[str, Any]]]:
        """Why each item was recommended after each history: see :func:`temarec.models.tema.explain.explain`."""
        return explain(self, history, domain, local_item_ids, top_tags, parts)

    # ---- what the model reads from the dataset folder ------------------------------------------------------
    @classmethod
    def context_extras(cls, dataset: Any, cfg: Any) -> dict[str, Any]:
        """Frozen features and tag vectors from the dataset folder; missing image features drop "img"."""
        root = dataset.root
        mods = usable_modalities(dataset, cfg.model.specific["tema"].modalities, log_drop=True)
        extras: dict[str, Any] = {"modalities": mods}
        if any(m in CONTENT for m in mods):
            feats = dataset.features()
            extras["features"] = {m: feats[m] for m in CONTENT if m in mods}
        if "tag" in mods:
            from temarec.tags import load_tag_vectors

            try:
                vectors, names = load_tag_vectors(dataset, selection=cfg.tags.selection,
                                                  representation=cfg.tags.representation)
            except FileNotFoundError as exc:
                raise ValueError(f"model.tema.modalities includes tag but {root} has no tags ({exc}); run "
                                 f"`temarec tags --dataset {root}` or drop tag from model.tema.modalities") from exc
            extras["tag_vectors"], extras["tag_names"] = vectors, list(names)
        return extras

    @classmethod
    def describe_sources(cls, dataset: Any, cfg: Any) -> dict[str, str]:
        return describe_sources(dataset, cfg)

    @classmethod
    def describe_training(cls, dataset: Any, cfg: Any) -> str:
        m, own = cfg.model, cfg.model.specific[cls.name]
        return describe_loss(m.loss, m.num_sampled, m.negative_power, tuple(dataset.domain_sizes),
                             calibrated=own.sampled_correction)


def simplex_grid(k: int, step: float) -> list[tuple[float, ...]]:
    """Every k-vector of non-negative multiples of ``step`` summing to 1 (k = 3, step 0.1: 66 points)."""
    n = round(1 / step)

    def parts(k: int, left: int) -> list[tuple[int, ...]]:
        return [(left,)] if k == 1 else [(i, *rest) for i in range(left + 1) for rest in parts(k - 1, left - i)]

    return [tuple(i / n for i in p) for p in parts(k, n)] if k > 0 else []

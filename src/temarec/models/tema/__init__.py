"""TEMA-LLM (Sec. III-E/F): tag-enriched multimodal items, one causal encoder per (view, modality), fused predictions.

Read top to bottom, as the paper goes:

    items.py      item representation: e_id, e_img, e_tex, e_tag and the fused e_item (eqs. 3-9)
    encoders.py   the three views of a history (Sec. III-F); their V*M causal encoders (eqs. 10-11) are
                  models/attention.py's StackedEncoders, the implementation SASRec uses too
    heads.py      modality and view weights of the similarity heads (eqs. 12-16); their softmax is models/softmax.py
    model.py      TEMA itself: settings (model.tema.*), training loss (eqs. 14-15), scores (eqs. 16-17)
    explain.py    why an item was recommended (shared tags, modality shares) and what reports say about a run

The readings of the paper these files commit to (what F_m and E_m are, which view is X, how training sees the
views causally, the temperature, cold items) are argued in docs/DESIGN.md, section "TEMA model".
"""

from temarec.models.tema.encoders import view_gather, view_starts
from temarec.models.tema.heads import modality_weights, view_weights
from temarec.models.tema.items import CONTENT, MODALITIES, ItemEmbeddings, usable_modalities
from temarec.models.tema.model import TEMA, TemaSettings

__all__ = ["TEMA", "TemaSettings", "ItemEmbeddings", "modality_weights",
           "view_weights", "view_gather", "view_starts", "usable_modalities", "MODALITIES", "CONTENT"]

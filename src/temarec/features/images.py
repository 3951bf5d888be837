"""Item images: local files or http(s) URLs, each URL fetched once into a cache folder.

A relative path in ``items.parquet`` is read relative to the dataset folder. A URL is stored as
``DIR/features/image_cache/<sha256(url)>``; a failed fetch is not cached, so a rerun tries it again.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import tempfile
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from temarec.extras import require

log = logging.getLogger(__name__)

FETCH_WORKERS = 8  # downloads are I/O-bound; a few in flight hide latency without hammering one host
MAX_IMAGE_BYTES = 20 << 20
USER_AGENT = "temarec-features/0.1"


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _blank(source: Any) -> bool:
    return source is None or (isinstance(source, float) and math.isnan(source)) or not str(source).strip()


def url_cache_path(url: str, cache_dir: Path) -> Path:
    return cache_dir / hashlib.sha256(url.encode()).hexdigest()


def fetch_url(url: str, dest: Path, timeout_s: float) -> None:
    """Download ``url`` to ``dest`` atomically; raises OSError/ValueError on any failure."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        body = response.read(MAX_IMAGE_BYTES + 1)
    if len(body) > MAX_IMAGE_BYTES:
        raise ValueError(f"larger than {MAX_IMAGE_BYTES >> 20} MiB")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return f"URL error: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def locate_images(sources: Sequence[Any], root: Path, cache_dir: Path,
                  timeout_s: float) -> tuple[list[Path | None], dict[int, str]]:
    """Per item row: the local image file (None when the item has no image or it failed) and failures by row."""
    files: list[Path | None] = [None] * len(sources)
    failures: dict[int, str] = {}
    pending: dict[str, list[int]] = {}  # URL -> rows, so a URL shared by items is fetched once
    for row, source in enumerate(sources):
        if _blank(source):
            continue
        source = str(source).strip()
        if is_url(source):
            cached = url_cache_path(source, cache_dir)
            if cached.is_file():
                files[row] = cached
            else:
                pending.setdefault(source, []).append(row)
            continue
        path = Path(source).expanduser()
        path = path if path.is_absolute() else root / path
        if path.is_file():
            files[row] = path
        else:
            failures[row] = f"no such file: {path}"
    if pending:
        cache_dir.mkdir(parents=True, exist_ok=True)
        log.info("fetching %d image URL(s) into %s", len(pending), cache_dir)
        with ThreadPoolExecutor(FETCH_WORKERS) as pool:
            futures = {pool.submit(fetch_url, url, url_cache_path(url, cache_dir), timeout_s): url for url in pending}
            bar = tqdm(as_completed(futures), total=len(futures), desc="fetch images", unit="img",
                       disable=not sys.stderr.isatty())
            for future in bar:
                url = futures[future]
                try:
                    future.result()
                except (OSError, ValueError) as exc:  # HTTP/URL errors and timeouts are OSError subclasses
                    for row in pending[url]:
                        failures[row] = _reason(exc)
                    continue
                for row in pending[url]:
                    files[row] = url_cache_path(url, cache_dir)
    return files, failures


def open_image(path: Path) -> Any:
    """Decode one image to RGB; raises OSError/ValueError when it is not a readable image."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise ValueError(str(exc)) from exc


def require_pillow() -> None:
    """Pillow, or a one-line error naming the extra (MissingExtra is a ValueError)."""
    require("PIL", "image", "image features")

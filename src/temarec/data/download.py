"""``temarec download NAME``: fetch a public raw data set, checked against pinned sha256 digests.

Files land in ``OUT/NAME/FILE`` (``OUT`` defaults to ``data/raw``), so a download folder is itself a valid
``--mirror`` for another machine. Each file is streamed into a temporary file beside its destination and
renamed only after its digest matches; a mismatch deletes it and raises. Files already present with the
right digest are kept.

``--mirror`` is either a local folder laid out as ``DIR/NAME/FILE`` or a base URL serving the same layout.
Without it the files come from the publishers' GitHub repositories. Those URLs are our best reading of
each repository's layout (default branch ``main``), not addresses the publishers document; if one moves,
point ``--mirror`` at a copy. ``amazon-titles`` is a TSV conversion (``asin  domain  title``) of the
pickled title dicts of the LLMCDSR release (``data/food-kitchen/text_A.pkl``, ``text_B.pkl``), so it has
no upstream URL of its own: it comes from a mirror only. Read such pickles with :func:`safe_unpickle_dict`,
never with ``pickle.load``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from temarec.data.dataset import DataError
from temarec.fileio import sha256_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublicSet:
    base_url: str | None  # upstream folder; None = available from a mirror only
    files: dict[str, str]  # file name -> sha256


PUBLIC_SETS: dict[str, PublicSet] = {
    "abxi-food-kitchen": PublicSet(
        "https://raw.githubusercontent.com/DiMarzioBian/ABXI/main/data/afk",
        {"afk_50_preprocessed.txt": "5f9856f574879920a70c93461add1ebc1c997b1ce6d626ba8d475315f53a4a15",
         "map_item_50.txt": "64a939f71c0c48ba181d6d24e384af1160812bdf244f20c58ef101f5fc54b3c3",
         "map_user_50.txt": "e20b90e5b7b298e38243a64eb54830d537ea5a7a3ab5ae74d6d0179142a6d684"}),
    "c2dsr-food-kitchen": PublicSet(
        "https://raw.githubusercontent.com/crystal22/C2DSR/main/data/raw/Food-Kitchen",
        {"items_a.txt": "6961a3420ab9345d967991d5940737a549339ff65b36c3da4cfa619c07dbfc7b",
         "items_b.txt": "6dd8c154773fdd2a63f3d7d4938a51be9180eda07f4092f2f69798fae9975e2b",
         "userlist.txt": "9f9c85ce351c6fc0821a164d36c3ef1a6cffb20ccaaa25e56f3101eb42d6954f",
         "val_new.txt": "119222e24c6446231fd5d91d44bfc103ce7a445395a4ebc4e54be6c52a31135c",
         "test_new.txt": "a5bbf914f862cf25552eb28cc07ede1ca5db6c66e61421de7ace7e114cd8df9d"}),
    "amazon-titles": PublicSet(
        None,
        {"food_kitchen_titles.tsv": "07542ca21bd7ad0b6f97a012b1c2a75e128927848d6c12ae9f0bebd37b339193"}),
}


def download(name: str, out: str | Path = "data/raw", mirror: str | Path | None = None,
             timeout_s: float = 60.0) -> Path:
    """Fetch public set ``name`` into ``out/name``; returns that folder."""
    if name not in PUBLIC_SETS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(PUBLIC_SETS)}")
    spec = PUBLIC_SETS[name]
    mirror = str(mirror) if mirror is not None else None
    if mirror is None and spec.base_url is None:
        raise DataError(f"{name} has no upstream URL (it is a converted file); pass --mirror DIR_OR_URL "
                        "holding NAME/FILE")
    dest = Path(out) / name
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        _fetch_all(spec, name, dest, mirror, timeout_s)
    except BaseException:
        if created and not any(dest.iterdir()):  # nothing verified landed: leave no empty folder behind
            dest.rmdir()
        raise
    return dest


def _fetch_all(spec: PublicSet, name: str, dest: Path, mirror: str | None, timeout_s: float) -> None:
    for file, digest in spec.files.items():
        target = dest / file
        if target.is_file() and sha256_file(target) == digest:
            logger.info("%s is present and verified", target)
            continue
        if mirror is None:
            source = f"{spec.base_url}/{file}"
        elif _is_url(mirror):
            source = f"{mirror.rstrip('/')}/{name}/{file}"
        else:
            source = str(Path(mirror) / name / file)
        logger.info("fetching %s", source)
        with _open_source(source, timeout_s) as stream:
            _save_verified(stream, target, digest, source)


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def _open_source(source: str, timeout_s: float) -> IO[bytes]:
    if not _is_url(source):
        if not Path(source).is_file():
            raise DataError("file not found in the mirror (expected layout DIR/NAME/FILE)", source)
        return open(source, "rb")
    try:
        return urllib.request.urlopen(source, timeout=timeout_s)  # noqa: S310 (http(s) checked above)
    except urllib.error.HTTPError as exc:
        raise DataError(f"download failed: HTTP {exc.code} {exc.reason}", source) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"download failed: {getattr(exc, 'reason', exc)}", source) from exc


def _save_verified(stream: IO[bytes], target: Path, digest: str, source: str) -> None:
    """Stream into a temporary sibling of ``target``; rename only if the sha256 matches."""
    h = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            while block := stream.read(1 << 20):
                h.update(block)
                fh.write(block)
        if h.hexdigest() != digest:
            raise DataError(f"sha256 mismatch: expected {digest}, got {h.hexdigest()}; the file was not kept "
                            "(a changed upstream file or a wrong mirror)", source)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a data file is meant to be shared
        os.replace(tmp, target)
    except (OSError, urllib.error.URLError) as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"download failed: {exc}", source) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_PICKLE_ALLOWED = {("builtins", n) for n in ("dict", "list", "str", "int", "float", "tuple")}


class _PlainDataUnpickler(pickle.Unpickler):
    """Refuses every global except plain containers and scalars, so no code can run on load."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only dict, list, str, int, float "
                                     "and tuple are allowed")


def safe_unpickle_dict(path: str | Path) -> dict:
    """Load a pickled dict of plain data (e.g. a title file) without running any code from it."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    try:
        with open(path, "rb") as fh:
            value = _PlainDataUnpickler(fh).load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"unsafe or unreadable pickle: {exc}", path) from exc
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise DataError(f"not a readable pickle ({type(exc).__name__}: {exc})", path) from exc
    if not isinstance(value, dict):
        raise DataError(f"expected a pickled dict, got {type(value).__name__}", path)
    return value

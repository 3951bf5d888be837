"""``temarec prepare``: one entry point over the four importers, and the small readers they share.

Every importer reads its raw files, builds the items table and the three splits, and hands them to
:func:`temarec.data.dataset.write_dataset`, which writes the dataset folder atomically. Nothing else is
written to ``out``: a bad input raises :class:`DataError` (file, line, problem) before the folder exists.

The manifest's ``source`` records what was read: ``{"format": ..., "files": {name: {"path", "sha256"}}}``.
"""

from __future__ import annotations

import gzip
import importlib
import io
import logging
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Sequence

from temarec.config import DataConfig
from temarec.data.dataset import DataError, sha256_file

logger = logging.getLogger(__name__)

# format -> (module, function); imported on use because the importers import this module's helpers
IMPORTERS = {
    "c2dsr": ("temarec.data.c2dsr", "import_c2dsr"),
    "abxi": ("temarec.data.abxi", "import_abxi"),
    "interactions": ("temarec.data.interactions", "import_interactions"),
    "amazon": ("temarec.data.amazon", "import_amazon"),
}


def prepare(fmt: str, out: str | Path, cfg: DataConfig | None = None, **kwargs: Any) -> Path:
    """Import raw data of format ``fmt`` into the dataset folder ``out``; returns its path.

    ``kwargs`` are the importer's own arguments (see each ``import_*`` function), e.g.
    ``prepare("c2dsr", "data/fk", input_dir="raw/", domains=("Food", "Kitchen"))``.
    """
    if fmt not in IMPORTERS:
        raise ValueError(f"unknown --format {fmt!r}; expected one of {', '.join(IMPORTERS)}")
    module, name = IMPORTERS[fmt]
    importer = getattr(importlib.import_module(module), name)
    logger.info("preparing %s data into %s", fmt, out)
    path = importer(out=out, cfg=cfg or DataConfig(), **kwargs)
    logger.info("wrote dataset folder %s", path)
    return path


def parse_domains(domains: str | Sequence[str]) -> tuple[str, str]:
    """``"Food,Kitchen"`` or ``("Food", "Kitchen")`` -> two distinct, non-empty names."""
    names = [d.strip() for d in domains.split(",")] if isinstance(domains, str) else [str(d).strip() for d in domains]
    if len(names) != 2 or not all(names) or names[0] == names[1]:
        raise DataError(f"--domains needs two distinct names, first domain first (e.g. Food,Kitchen); got {domains!r}")
    return names[0], names[1]


def open_text(path: str | Path) -> IO[str]:
    """Open a text file for reading, transparently gunzipping (detected by magic bytes, not the name)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    if gz:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline) of a text or .gz file; bad bytes -> DataError."""
    lineno = 0
    with open_text(path) as fh:
        try:
            for lineno, line in enumerate(fh, start=1):
                yield lineno, line.rstrip("\r\n")
        except (UnicodeDecodeError, EOFError, OSError) as exc:
            raise DataError(f"cannot read this file as UTF-8 text ({exc})", path, lineno + 1) from exc


def check_out(out: str | Path, overwrite: bool) -> Path:
    """Fail before any parsing when ``out`` exists and is not empty (write_dataset checks again at the end)."""
    out = Path(out)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise DataError("output folder exists and is not empty; pass --overwrite or choose another --out", out)
    return out


def input_folder(path: str | Path) -> Path:
    """An importer's input folder, or a DataError when it is not one."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError("input folder not found", folder)
    return folder


def find_file(folder: Path, candidates: Sequence[str], what: str, hint: str = "") -> Path:
    """The first of ``candidates`` present in ``folder``, or a DataError listing what was looked for."""
    for name in candidates:
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"no {what} file ({' or '.join(candidates)}) in this folder{hint}", folder)


def source_manifest(fmt: str, files: dict[str, Path | None]) -> dict[str, Any]:
    """The manifest's ``source`` entry: the format and each input file's path and sha256."""
    return {
        "format": fmt,
        "files": {name: {"path": str(Path(p).resolve()), "sha256": sha256_file(p)}
                  for name, p in files.items() if p is not None},
    }


def read_titles(path: str | Path) -> tuple[dict[tuple[str, str], str], dict[str, str]]:
    """A titles TSV (header ``asin  domain  title``) -> ({(asin, domain): title}, {asin: title}).

    Importers join by (asin, domain) first and fall back to the ASIN alone, so a TSV whose domain names
    differ from ``--domains`` still joins.
    """
    by_domain: dict[tuple[str, str], str] = {}
    by_asin: dict[str, str] = {}
    for lineno, line in iter_lines(path):
        fields = line.split("\t", 2)
        if lineno == 1:
            if [f.strip().lower() for f in fields] != ["asin", "domain", "title"]:
                raise DataError("a titles file needs the tab-separated header 'asin  domain  title', "
                                f"got {line[:80]!r}", path, 1)
            continue
        if not line.strip():
            continue
        if len(fields) < 3:
            raise DataError(f"expected 3 tab-separated columns (asin, domain, title), got {len(fields)}", path, lineno)
        asin, domain, title = (f.strip() for f in fields)
        if title:
            by_domain[(asin, domain)] = title
            by_asin.setdefault(asin, title)
    logger.info("read %d titles from %s", len(by_domain), path)
    return by_domain, by_asin


def title_lookup(path: str | Path | None) -> Callable[[str, str], str | None]:
    """``lookup(asin, domain) -> title or None`` over an optional titles TSV."""
    if path is None:
        return lambda asin, domain: None
    by_domain, by_asin = read_titles(path)
    return lambda asin, domain: by_domain.get((asin, domain), by_asin.get(asin))

"""``temarec prepare``: one entry point over the importers, their registry, and the small readers they share.

Every importer (a module of ``temarec.data.importers``) reads its raw files, builds the items table and the three
splits, and hands them to :func:`temarec.data.dataset.write_dataset`, which writes the dataset folder atomically.
Nothing else is written to ``out``: a bad input raises :class:`DataError` (file, line, problem) before the folder
exists. An importer registers itself with ``register_importer``, naming its format and its own CLI flags; the
first lookup imports every module of ``temarec.data.importers``, so adding a format touches no other file.

The manifest's ``source`` records what was read: ``{"format": ..., "files": {name: {"path", "sha256"}}}``.
"""

from __future__ import annotations

import gzip
import importlib
import io
import logging
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Sequence

from temarec.config import DataConfig
from temarec.data.dataset import DataError
from temarec.fileio import sha256_file

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class Flag:
    """A CLI flag of ``temarec prepare`` that an importer reads: ``--input DIR`` -> ``input_dir=...``."""

    flag: str  # "--input"
    param: str  # the import function's argument it fills
    help: str
    required: bool = False
    metavar: str | None = None


@dataclass(frozen=True)
class Importer:
    format: str
    function: Callable[..., Path]  # function(out=, cfg=, domains=, overwrite=, **its flags' params)
    flags: tuple[Flag, ...]


_IMPORTERS: dict[str, Importer] = {}
_discovered = False


def register_importer(fmt: str, function: Callable[..., Path], *flags: Flag) -> None:
    """Called by each module of ``temarec.data.importers`` for its format."""
    _IMPORTERS[fmt] = Importer(fmt, function, tuple(flags))


def importers() -> dict[str, Importer]:
    """Every registered importer by format, sorted (imports the modules of ``temarec.data.importers`` on first use)."""
    global _discovered
    if not _discovered:
        _discovered = True
        package = importlib.import_module("temarec.data.importers")
        for info in pkgutil.iter_modules(package.__path__, prefix="temarec.data.importers."):
            importlib.import_module(info.name)
    return dict(sorted(_IMPORTERS.items()))


def prepare(fmt: str, out: str | Path, cfg: DataConfig | None = None, **kwargs: Any) -> Path:
    """Import raw data of format ``fmt`` into the dataset folder ``out``; returns its path.

    ``kwargs`` are the importer's own arguments (see each ``import_*`` function), e.g.
    ``prepare("c2dsr", "data/fk", input_dir="raw/", domains=("Food", "Kitchen"))``.
    """
    known = importers()
    if fmt not in known:
        raise ValueError(f"unknown --format {fmt!r}; expected one of {', '.join(known)}")
    logger.info("preparing %s data into %s", fmt, out)
    path = known[fmt].function(out=out, cfg=cfg or DataConfig(), **kwargs)
    logger.info("wrote dataset folder %s", path)
    return path


# stored timestamps are int64; the Amazon importer sorts on milliseconds, so seconds stay within int64 / 1000
# (about +-292 million years): beyond that a value is a corrupt cell, not a time
MAX_TIMESTAMP_S = (2**63 - 1) // 1000


def check_timestamp(value: int, path: str | Path, line: int | None, unit: str = "seconds") -> int:
    """``value`` if it is a timestamp int64 can hold (``unit`` ms: the int64 range), else a DataError."""
    bound = MAX_TIMESTAMP_S * (1000 if unit == "ms" else 1)
    if not -bound <= value <= bound:
        raise DataError(f"timestamp {value} is out of range (unix {unit} within +-{bound:.3g}); a corrupt value?",
                        path, line)
    return value


def start_folder_import(input_dir: str | Path, domains: str | Sequence[str], out: str | Path, overwrite: bool,
                        cfg: DataConfig | None) -> tuple[DataConfig, Path, tuple[str, str]]:
    """The checks an importer of a raw folder (C2DSR, ABXI) starts with, in this order: the folder, the domain
    names, the output folder; returns (config, folder, domains)."""
    folder = input_folder(input_dir)
    names = parse_domains(domains)
    check_out(out, overwrite)
    return cfg or DataConfig(), folder, names


def parse_domains(domains: str | Sequence[str]) -> tuple[str, str]:
    """``"Food,Kitchen"`` or ``("Food", "Kitchen")`` -> two distinct, non-empty names."""
    names = [d.strip() for d in domains.split(",")] if isinstance(domains, str) else [str(d).strip() for d in domains]
    if len(names) != 2 or not all(names) or names[0] == names[1]:
        raise DataError(f"--domains needs two distinct names, first domain first (e.g. Food,Kitchen); got {domains!r}")
    return names[0], names[1]


def _is_gzip(path: Path) -> bool:
    """Whether an existing file is gzip-compressed (by its magic bytes, not its name); DataError if missing."""
    if not path.is_file():
        raise DataError("file not found", path)
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def open_text(path: str | Path) -> IO[str]:
    """Open a text file for reading, transparently gunzipping (detected by magic bytes, not the name)."""
    path = Path(path)
    if _is_gzip(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a file's bytes, transparently gunzipping (detected by magic bytes, not the name)."""
    path = Path(path)
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")  # type: ignore[return-value]


def nul_byte_line(path: str | Path, chunk: int = 1 << 22) -> int | None:
    """The 1-based line of the first NUL byte in a text file (None when it has none): no text holds one, and
    pandas' CSV parser reads it as a line break or drops it, silently."""
    seen_lines = 1
    with open_binary(path) as fh:
        try:
            while block := fh.read(chunk):
                at = block.find(b"\x00")
                if at >= 0:
                    return seen_lines + block.count(b"\n", 0, at)
                seen_lines += block.count(b"\n")
        except (EOFError, OSError) as exc:
            raise DataError(f"cannot read this file ({exc})", path) from exc
    return None


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline) of a text or .gz file; bad bytes -> DataError.

    Lines are decoded one at a time (a text-mode reader decodes whole chunks, and its error would name the
    chunk's first line, not the line with the bad bytes).
    """
    lineno = 0
    with open_binary(path) as fh:
        try:
            for lineno, raw in enumerate(fh, start=1):
                yield lineno, raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise DataError(f"cannot read this line as UTF-8 text ({exc})", path, lineno) from exc
        except (EOFError, OSError) as exc:  # a truncated or corrupt .gz
            raise DataError(f"cannot read this file ({exc})", path, lineno + 1) from exc


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

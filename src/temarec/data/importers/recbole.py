"""Import RecBole atomic files (``--format recbole``): where many users keep their data.

Files in the input folder (one data set; NAME is its name)::

    NAME.inter   user_id:token  item_id:token  timestamp:float  [domain:token]   one row per interaction
    NAME.item    item_id:token  [title:token_seq]  [domain:token]                 one row per item

Column headers are RecBole's ``name:type``; the types are ignored and the names matter. Each interaction's domain
comes from the ``.inter`` file's ``domain`` column when it has one, else from the ``.item`` file's (joined on
``item_id``); its values must be the two ``--domains`` names. Titles come from ``.item``'s ``title``. From there
the data take the generic interactions path (``temarec.data.importers.interactions``): duplicate removal, the
paper's filter, a stable chronological leave-one-out split. ``temarec export --format recbole`` writes this
layout, so exporting a dataset folder and importing it back gives the same split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from temarec.config import DataConfig
from temarec.data.dataset import DataError
from temarec.data.importers.interactions import Meta, _encode, _items_meta, filter_split_write
from temarec.data.prepare import Flag, check_out, input_folder, parse_domains, register_importer, source_manifest


def import_recbole(input_dir: str | Path, domains: str | Sequence[str], out: str | Path, *,
                   cfg: DataConfig | None = None, overwrite: bool = False) -> Path:
    """Read a folder of RecBole atomic files (NAME.inter, NAME.item) and write the dataset folder ``out``."""
    cfg = cfg or DataConfig()
    folder = input_folder(input_dir)
    names = parse_domains(domains)
    check_out(out, overwrite)
    inter_path, item_path = _files(folder)
    inter = read_atomic(inter_path, required=("user_id", "item_id", "timestamp"))
    items = read_atomic(item_path, required=("item_id",)) if item_path else None
    if "domain" not in inter.columns:
        if items is None or "domain" not in items.columns:
            raise DataError(f"no domain column in {inter_path.name} nor in a NAME.item file beside it: each "
                            "interaction's domain must come from one of them (domain:token)", folder)
        domain_of = dict(zip(items["item_id"], items["domain"]))
        inter["domain"] = inter["item_id"].map(domain_of)
        missing = inter["domain"].isna().to_numpy()
        if missing.any():
            row = int(missing.nonzero()[0][0])
            raise DataError(f"item_id {inter['item_id'].iat[row]!r} is not in {item_path.name} (no domain for it)",
                            inter_path, row + 2)
    frame = inter.rename(columns={"user_id": "user", "item_id": "item"})[["user", "item", "timestamp", "domain"]]
    frame.attrs["first_row_line"] = 2  # the header is line 1
    log = _encode(frame, inter_path, names)
    meta_frame = None
    if items is not None:
        meta_frame = items.rename(columns={"item_id": "item"})
        meta_frame = meta_frame[[c for c in ("item", "domain", "title") if c in meta_frame.columns]]
        meta_frame.attrs["first_row_line"] = 2

    def meta(keep: set[str]) -> Meta:
        return _items_meta(meta_frame, item_path, keep, log, names) if meta_frame is not None else {}

    return filter_split_write(log, names, out, meta, cfg=cfg, overwrite=overwrite, inputs=str(inter_path),
                              source=source_manifest("recbole", {"inter": inter_path, "item": item_path}))


def _files(folder: Path) -> tuple[Path, Path | None]:
    inters = sorted(folder.glob("*.inter"))
    if len(inters) != 1:
        found = ", ".join(p.name for p in inters) or "none"
        raise DataError(f"expected one NAME.inter file (RecBole atomic files), found {found}: give --input a folder "
                        "holding one data set", folder)
    item = inters[0].with_suffix(".item")
    return inters[0], item if item.is_file() else None


def read_atomic(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """A RecBole atomic file (TSV, ``name:type`` headers) -> DataFrame of strings with the plain names."""
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"not a readable tab-separated RecBole file ({' '.join(str(exc).split())[:160]})",
                        path) from exc
    frame.columns = [str(c).split(":", 1)[0].strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"no column(s) {', '.join(missing)} in the header (RecBole names such as "
                        f"{', '.join(f'{c}:token' for c in missing)}); found {', '.join(frame.columns)}", path, 1)
    frame = frame.replace("", None)
    return frame


register_importer("recbole", import_recbole,
                  Flag("--input", "input_dir", "folder with RecBole atomic files NAME.inter (+ NAME.item)",
                       metavar="DIR"))

"""Read any Gaia export (file, DataFrame, astropy Table, GRASP sample) into one clean DataFrame.

The rest of the package only ever sees what :func:`read_catalog` returns: lower-case Gaia
column names, numeric columns as numpy floats/ints (NaN for missing values), ``source_id`` as
exact integers, strings as strings. Every bad input fails here with a :class:`CatalogError`
naming the file, the column and the fix.
"""

from __future__ import annotations

import difflib
import gzip
import logging
import os
import sys
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from grasp_dl.runtime.errors import CatalogError

if TYPE_CHECKING:  # astropy is imported when a FITS, VOTable or ECSV file or an astropy Table is met
    from astropy.table import Column, Table

__all__ = [
    "GAIA_ALIASES",
    "SUPPORTED_FORMATS",
    "CatalogChunkWriter",
    "iter_catalog",
    "read_catalog",
    "require_columns",
    "require_numeric",
    "write_catalog",
]

#: Format name -> file-name suffixes it is recognised by (matched case-insensitively).
SUPPORTED_FORMATS: Mapping[str, tuple[str, ...]] = {
    "csv": (".csv", ".csv.gz", ".tsv", ".tsv.gz"),
    "parquet": (".parquet", ".pq"),
    "fits": (".fits", ".fit", ".fits.gz", ".fts"),
    "votable": (".vot", ".votable", ".xml"),
    "ecsv": (".ecsv",),
}

#: Other common names of Gaia columns (lower-case) -> the ``gaia_source`` name. Used only when
#: the Gaia name is not already in the table. Covers GRASP's short magnitude names and the
#: VizieR I/355/gaiadr3 names.
GAIA_ALIASES: dict[str, str] = {
    # GRASP / seed short names
    "g": "phot_g_mean_mag",
    "bp": "phot_bp_mean_mag",
    "rp": "phot_rp_mean_mag",
    # VizieR I/355/gaiadr3
    "source": "source_id",
    "ra_icrs": "ra",
    "de_icrs": "dec",
    "e_ra_icrs": "ra_error",
    "e_de_icrs": "dec_error",
    "pmde": "pmdec",
    "e_pmra": "pmra_error",
    "e_pmde": "pmdec_error",
    "pmrapmdecor": "pmra_pmdec_corr",
    "plx": "parallax",
    "e_plx": "parallax_error",
    "rplx": "parallax_over_error",
    "gmag": "phot_g_mean_mag",
    "bpmag": "phot_bp_mean_mag",
    "rpmag": "phot_rp_mean_mag",
    "bp-rp": "bp_rp",
    "bp-g": "bp_g",
    "g-rp": "g_rp",
    "rv": "radial_velocity",
    "e_rv": "radial_velocity_error",
    "glon": "l",
    "glat": "b",
}

_ASTROPY_FORMATS = {"fits": "fits", "votable": "votable", "ecsv": "ascii.ecsv"}
_ID_COLUMN = "source_id"
_COLUMNS_FIX = "pass columns={'<your name>': '<gaia name>'} to read_catalog, or set data.columns in the config"


# --------------------------------------------------------------------------- public API


def read_catalog(
    source: Any,
    columns: Mapping[str, str] | None = None,
    *,
    format: str | None = None,
    required: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read a catalogue file or in-memory table into a DataFrame with normalised Gaia column names.

    ``source`` is a path (CSV, Parquet, FITS, VOTable, ECSV), a DataFrame (copied), an astropy
    Table, or any object whose ``.data`` holds one of those. ``columns`` renames the user's
    names to Gaia names (pandas ``rename`` direction, keys matched case-insensitively) before
    the built-in :data:`GAIA_ALIASES`; ``required`` names the columns that must then exist.
    """
    if format is not None:
        _check_format_name(format, "read_catalog")
    id_names = _id_names(columns)
    frame, label = _load(source, format, id_names)
    frame = _clean(frame, label, columns)
    if required:
        require_columns(frame, [_norm(name) for name in _names(required)], source=label)
    return frame


def iter_catalog(
    source: Any,
    columns: Mapping[str, str] | None = None,
    *,
    chunk_size: int = 262_144,
    keep: Iterable[str] | None = None,
    format: str | None = None,
) -> Iterator[pd.DataFrame]:
    """Read a catalogue ``chunk_size`` rows at a time, each chunk cleaned exactly as :func:`read_catalog` does.

    CSV and Parquet files are streamed (only the columns whose Gaia name is in ``keep``, when
    given), FITS files are memory-mapped and sliced, so a catalogue of 10^7 stars never sits in
    memory whole; VOTable, ECSV and in-memory tables are read whole and handed out in slices.
    Every chunk carries its rows' positions in the input as its index.
    """
    if int(chunk_size) < 1:
        raise CatalogError(f"chunk_size must be a positive number of rows, got {chunk_size}")
    if format is not None:
        _check_format_name(format, "iter_catalog")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        _check_path(path)
        fmt, _ = _resolve_format(path, format)
        _sniff(path, fmt)
        if fmt in _CHUNK_READERS:
            yield from _read_chunks(path, fmt, columns, keep, int(chunk_size))
            return
    frame = read_catalog(source, columns, format=format)
    for start in range(0, len(frame), chunk_size):
        yield frame.iloc[start : start + chunk_size]


def _read_chunks(
    path: Path, fmt: str, columns: Mapping[str, str] | None, keep: Iterable[str] | None, chunk_size: int
) -> Iterator[pd.DataFrame]:
    """The chunks of a file whose format has a chunked reader, each cleaned as read_catalog does."""
    start = 0
    try:
        header = _CHUNK_HEADERS[fmt](path)
        raw = _raw_names_to_read(header, columns, keep, str(path))
        id_names = _id_names(columns)
        for chunk in _CHUNK_READERS[fmt](path, raw, id_names, chunk_size):
            chunk.index = pd.RangeIndex(start, start + len(chunk))
            start += len(chunk)
            yield _clean(chunk, str(path), columns)
    except CatalogError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise CatalogError(f"catalogue file {path} is empty (no header, no rows): re-export the catalogue.") from exc
    except Exception as exc:
        raise CatalogError(
            f"cannot read {path} as {fmt} ({type(exc).__name__}: {_one_line(exc)}): check that the "
            f"file is a complete {fmt} export, or pass format= if the suffix is misleading."
        ) from exc
    if start == 0:
        _check_not_empty(pd.DataFrame(columns=raw), str(path))


def require_columns(df: pd.DataFrame, names: Iterable[str], *, source: str = "the catalogue") -> None:
    """Fail with one message listing every missing column, its closest present names and the fix."""
    present = [str(c) for c in df.columns]
    missing = [name for name in _names(names) if name not in df.columns]
    if not missing:
        return
    parts = [f"'{name}' ({_closest_text(name, present)})" for name in missing]
    noun = "column" if len(missing) == 1 else "columns"
    raise CatalogError(f"{source} lacks the required {noun} {', '.join(parts)}: {_COLUMNS_FIX}.")


def require_numeric(df: pd.DataFrame, names: Iterable[str], *, source: str = "the catalogue") -> None:
    """Fail unless every named column holds numbers (int or float; text and booleans are refused)."""
    names = _names(names)
    require_columns(df, names, source=source)
    problems = [_numeric_problem(df[name], name, source) for name in names]
    problems = [p for p in problems if p]
    if problems:
        raise CatalogError("; ".join(problems) + ": fix the column or choose other features.")


def write_catalog(df: pd.DataFrame, path: str | os.PathLike[str], *, format: str | None = None) -> Path:
    """Write ``df`` (CSV, Parquet, FITS, VOTable or ECSV, chosen by suffix) atomically; return the path.

    The table goes to a hidden temporary file in the same directory which then replaces
    ``path`` in one step, so an interrupted write never leaves a half-written catalogue.
    """
    if not isinstance(df, pd.DataFrame):
        raise CatalogError(f"write_catalog needs a pandas DataFrame, got {type(df).__name__}: convert it first.")
    path = Path(path)
    fmt, suffix = _resolve_format(path, format)
    if not path.parent.is_dir():
        raise CatalogError(
            f"cannot write {path}: the directory {path.parent} does not exist (current directory {Path.cwd()}); "
            "create it first or choose another path."
        )
    tmp = _temp_path(path, suffix)
    try:
        _WRITERS[fmt](df, tmp)
        os.replace(tmp, path)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise CatalogError(f"cannot write {path} as {fmt}: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _temp_path(path: Path, suffix: str) -> Path:
    """A unique hidden temporary name beside ``path`` carrying this process's id.

    The pattern (``.<name>.<pid>.<random>.tmp<suffix>``) is the one
    :func:`grasp_dl.runtime.io_policy.remove_stale_temps` clears once its process is gone.
    """
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp{suffix}")


def _names(names: str | Iterable[str]) -> list[str]:
    """Column names as a list without repeats; a single string is one name, not its letters."""
    return list(dict.fromkeys([names] if isinstance(names, str) else names))


# --------------------------------------------------------------------------- loading


def _load(source: Any, fmt: str | None, id_names: set[str]) -> tuple[pd.DataFrame, str]:
    """Turn any accepted source into a (fresh DataFrame, label naming it in messages) pair."""
    if isinstance(source, pd.DataFrame):
        return source.copy(), "the DataFrame"
    if _is_astropy_table(source):
        return _table_to_frame(source, "the astropy Table"), "the astropy Table"
    if isinstance(source, (str, os.PathLike)):
        return _read_file(Path(source), fmt, id_names), str(source)
    inner = getattr(source, "data", None)
    if isinstance(inner, pd.DataFrame) or _is_astropy_table(inner):
        frame, _ = _load(inner, fmt, id_names)
        return frame, f"the {type(source).__name__}'s .data"
    raise CatalogError(
        f"cannot read a catalogue from a {type(source).__name__}: pass a file path, a pandas DataFrame, "
        "an astropy Table, or an object whose .data holds one of those."
    )


def _is_astropy_table(obj: Any) -> bool:
    """Whether ``obj`` is an astropy Table, without importing astropy (no Table exists before it is imported)."""
    table_module = sys.modules.get("astropy.table")
    return table_module is not None and isinstance(obj, table_module.Table)


def _clean(frame: pd.DataFrame, label: str, columns: Mapping[str, str] | None) -> pd.DataFrame:
    """Normalise names, apply the user's mapping and the aliases, simplify dtypes (read_catalog's steps)."""
    frame = _normalise_names(frame, label)
    _check_not_empty(frame, label)
    if columns:
        frame = _apply_mapping(frame, columns, label)
    frame = _apply_aliases(frame)
    frame = _simplify_dtypes(frame)
    return _fix_source_id(frame)


def _read_file(path: Path, fmt: str | None, id_names: set[str]) -> pd.DataFrame:
    """Read one catalogue file, wrapping any parser failure into a CatalogError naming the file."""
    _check_path(path)
    fmt, _ = _resolve_format(path, fmt)
    _sniff(path, fmt)
    try:
        return _READERS[fmt](path, id_names)
    except CatalogError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise CatalogError(f"catalogue file {path} is empty (no header, no rows): re-export the catalogue.") from exc
    except Exception as exc:
        raise CatalogError(
            f"cannot read {path} as {fmt} ({type(exc).__name__}: {_one_line(exc)}): check that the file is a complete "
            f"{fmt} export, or pass format= if the suffix is misleading (one of {', '.join(SUPPORTED_FORMATS)})."
        ) from exc


def _check_path(path: Path) -> None:
    """A catalogue path must name an existing file."""
    if not path.exists():
        raise CatalogError(
            f"catalogue file {path} does not exist (current directory: {Path.cwd()}): check the path; "
            "relative paths are resolved against the current directory."
        )
    if path.is_dir():
        raise CatalogError(f"{path} is a directory, not a catalogue file: give the path of the file itself.")


#: Bytes read from the start of a file to tell whether it is a table at all, before any parser runs.
SNIFF_BYTES = 1 << 16
#: Files from this size on are sniffed; a smaller one costs little memory, and its parser's own error is kept.
SNIFF_FROM_SIZE = 1 << 20


def _sniff(path: Path, fmt: str) -> None:
    """Refuse, from its first bytes (and last, for Parquet), a file that cannot be a table of its format.

    A parser handed a large file that is no table (zeros, an image, a disk dump) may read all of
    it, and hold it, before failing; these checks read at most a few kilobytes. Files under
    :data:`SNIFF_FROM_SIZE` are left to the parser.

    Raises
    ------
    CatalogError
        For a text format whose start holds NUL bytes or no line end, a gzip file without the
        gzip signature, a Parquet file without ``PAR1`` at both ends, or a FITS file not starting
        with ``SIMPLE``.
    """
    size = path.stat().st_size
    if size < SNIFF_FROM_SIZE:
        return
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
        tail = b""
        if fmt == "parquet" and size >= 8:
            handle.seek(size - 4)
            tail = handle.read(4)
    gz = path.name.lower().endswith(".gz")
    why = None
    if not head:
        return  # empty files get their own message from the reader
    if gz:
        why = None if head[:2] == b"\x1f\x8b" else "it lacks the gzip signature"
    elif fmt == "parquet":
        why = None if head[:4] == b"PAR1" and tail == b"PAR1" else "it lacks the Parquet signature (PAR1) at its ends"
    elif fmt == "fits":
        why = None if head.startswith(b"SIMPLE") else "it does not start with a FITS header (SIMPLE)"
    elif b"\0" in head:
        why = "it holds NUL bytes, so it is not text"
    elif size > len(head) and b"\n" not in head and b"\r" not in head:
        why = f"its first {len(head) // 1024} KiB hold no line end"
    if why:
        raise CatalogError(
            f"cannot read {path} as {fmt}: it is not a {fmt} table ({why}; {size:,} bytes): check the path, or pass "
            "format= if the suffix is misleading."
        )


def _resolve_format(path: Path, fmt: str | None) -> tuple[str, str]:
    """Return (format name, suffix to keep on temporary files) from ``format=`` or the file suffix."""
    name = path.name.lower()
    matched = [s for suffixes in SUPPORTED_FORMATS.values() for s in suffixes if name.endswith(s)]
    suffix = max(matched, key=len) if matched else path.suffix
    if fmt is not None:
        return _check_format_name(fmt, str(path)), suffix
    for key, suffixes in SUPPORTED_FORMATS.items():
        if suffix in suffixes:
            return key, suffix
    known = ", ".join(s for suffixes in SUPPORTED_FORMATS.values() for s in suffixes)
    raise CatalogError(
        f"cannot tell the format of {path} from its suffix ({path.suffix or 'it has none'}): supported suffixes are "
        f"{known}; rename the file or pass format= (one of {', '.join(map(repr, SUPPORTED_FORMATS))})."
    )


def _check_format_name(fmt: str, where: str) -> str:
    """Return the normalised ``format=`` value, or fail listing the supported ones."""
    key = str(fmt).strip().lower()
    if key not in SUPPORTED_FORMATS:
        choices = ", ".join(map(repr, SUPPORTED_FORMATS))
        raise CatalogError(f"unknown format={fmt!r} for {where}: choose one of {choices}.")
    return key


def _csv_separator(path: Path) -> str:
    """Tab for .tsv files, comma otherwise."""
    return "\t" if ".tsv" in path.name.lower() else ","


def _read_csv(path: Path, id_names: set[str]) -> pd.DataFrame:
    """Read CSV/TSV (optionally gzipped); identifier columns are read as text to keep all 19 digits.

    A row with more fields than the header is an error (pandas would otherwise shift the first
    row's values into an index), and so are repeated column names (pandas would rename them).
    """
    header = _csv_header(path)
    dtype = {name: "str" for name in header if _norm(name) in id_names}
    with _strict_csv():
        return pd.read_csv(path, sep=_csv_separator(path), dtype=dtype or None, index_col=False)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (parsers' messages span several), shortened."""
    if isinstance(exc, pd.errors.ParserWarning):
        return "a data row has more fields than the header line"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _strict_csv(warnings.catch_warnings):
    """Within it, pandas' 'header and data lengths differ' warning is an error (a row has extra fields)."""

    def __enter__(self) -> Any:
        result = super().__enter__()
        warnings.simplefilter("error", pd.errors.ParserWarning)
        return result


def _raw_csv_header(path: Path) -> list[str]:
    """The header line's names exactly as written (pandas would rename a repeated name to 'name.1')."""
    import csv

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8", errors="replace") as handle:
            return next(csv.reader(handle, delimiter=_csv_separator(path)), [])
    except (OSError, csv.Error) as exc:
        raise CatalogError(f"cannot read the header line of {path} ({_one_line(exc)}): check the file.") from exc


def _check_no_repeats(names: Sequence[str], label: str) -> None:
    """Refuse a header whose names repeat once normalised (pandas would rename a copy to 'name.1')."""
    _check_unique(
        list(names),
        [_norm(n) for n in names],
        label,
        "once names are made lower case and stripped",
        "rename or drop one of them so that each column appears once",
    )


def _read_parquet(path: Path, id_names: set[str]) -> pd.DataFrame:
    """Read a Parquet file with pandas (pyarrow)."""
    return pd.read_parquet(path)


def _read_astropy(fmt: str) -> Callable[[Path, set[str]], pd.DataFrame]:
    """Make a reader for one astropy format (FITS: the first table HDU; VOTable: the first table)."""

    def read(path: Path, id_names: set[str]) -> pd.DataFrame:
        from astropy.io.votable.exceptions import VOWarning
        from astropy.table import Table
        from astropy.units import UnitsWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnitsWarning)
            warnings.simplefilter("ignore", VOWarning)  # spec-conformance chatter of archive exports
            table = Table.read(path, format=_ASTROPY_FORMATS[fmt])
        return _table_to_frame(table, str(path))

    return read


_READERS: dict[str, Callable[[Path, set[str]], pd.DataFrame]] = {
    "csv": _read_csv,
    "parquet": _read_parquet,
    "fits": _read_astropy("fits"),
    "votable": _read_astropy("votable"),
    "ecsv": _read_astropy("ecsv"),
}


# --------------------------------------------------------------------------- reading in chunks


def _raw_names_to_read(
    header: Sequence[str], columns: Mapping[str, str] | None, keep: Iterable[str] | None, label: str
) -> list[str]:
    """The file's own column names whose Gaia names are in ``keep`` (all of them when ``keep`` is None).

    A wanted name the file lacks brings in its close matches too, so that the error which
    follows can still name them.
    """
    probe = pd.DataFrame(columns=list(header))
    probe = _normalise_names(probe, label)
    if columns:
        probe = _apply_mapping(probe, columns, label)
    names = list(_apply_aliases(probe).columns)
    if keep is None:
        return list(header)
    wanted = {_norm(k) for k in keep}
    for missing in wanted - set(names):
        wanted |= set(difflib.get_close_matches(missing, names, n=3, cutoff=0.6))
    selected = [raw for raw, name in zip(header, names, strict=False) if name in wanted]
    return selected or list(header)


def _csv_header(path: Path) -> list[str]:
    """The CSV's column names, refused when one repeats (pandas' own header would rename it silently)."""
    header = list(pd.read_csv(path, sep=_csv_separator(path), nrows=0).columns)
    _check_no_repeats(_raw_csv_header(path), str(path))
    return header


def _csv_chunks(path: Path, raw: list[str], id_names: set[str], chunk_size: int) -> Iterator[pd.DataFrame]:
    # Every column is parsed and then selected: with usecols pandas accepts rows with extra fields
    # silently, and the streamed read must refuse what read_catalog refuses.
    dtype = {name: "str" for name in raw if _norm(name) in id_names}
    reader = pd.read_csv(path, sep=_csv_separator(path), dtype=dtype or None, chunksize=chunk_size, index_col=False)
    while True:
        with _strict_csv():
            chunk = next(reader, None)
        if chunk is None:
            return
        yield chunk[raw]


def _parquet_header(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.ParquetFile(path).schema_arrow.names)


def _parquet_chunks(path: Path, raw: list[str], id_names: set[str], chunk_size: int) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_size, columns=raw):
        yield batch.to_pandas()


def _fits_table(path: Path) -> Table:
    from astropy.table import Table
    from astropy.units import UnitsWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnitsWarning)
        return Table.read(path, format="fits", memmap=True)


def _fits_chunks(path: Path, raw: list[str], id_names: set[str], chunk_size: int) -> Iterator[pd.DataFrame]:
    table = _fits_table(path)
    for start in range(0, len(table), chunk_size):
        yield _table_to_frame(table[start : start + chunk_size][raw], str(path))


_CHUNK_HEADERS: dict[str, Callable[[Path], list[str]]] = {
    "csv": _csv_header,
    "parquet": _parquet_header,
    "fits": lambda path: list(_fits_table(path).colnames),
}
_CHUNK_READERS: dict[str, Callable[[Path, list[str], set[str], int], Iterator[pd.DataFrame]]] = {
    "csv": _csv_chunks,
    "parquet": _parquet_chunks,
    "fits": _fits_chunks,
}


class CatalogChunkWriter:
    """Write a table chunk by chunk (CSV or Parquet) into a temporary file that replaces ``path`` at the end.

    Use as a context manager: the file appears, complete, only when the block ends without an
    error; otherwise the temporary file is removed and ``path`` is left as it was.
    """

    def __init__(self, path: str | os.PathLike[str], *, format: str | None = None) -> None:
        self.path = Path(path)
        self.format, suffix = _resolve_format(self.path, format)
        if self.format not in ("csv", "parquet"):
            raise CatalogError(f"cannot write {self.path} chunk by chunk: give a .csv or .parquet output")
        if not self.path.parent.is_dir():
            raise CatalogError(
                f"cannot write {self.path}: the directory {self.path.parent} does not exist; create it first."
            )
        self.tmp = _temp_path(self.path, suffix)
        self.rows = 0
        self._handle: Any = None
        self._schema: Any = None

    def write(self, df: pd.DataFrame) -> None:
        """Append ``df``'s rows; the first chunk fixes the columns and their types.

        Raises
        ------
        CatalogError
            When the file system refuses the write (permissions, a full disk).
        """
        try:
            self._write(df)
        except OSError as exc:
            raise CatalogError(f"cannot write {self.path} ({exc.strerror or exc}): choose another output") from exc
        self.rows += len(df)

    def _write(self, df: pd.DataFrame) -> None:
        if self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            if self._handle is None:
                self._schema = pa.Schema.from_pandas(df, preserve_index=False)
                # Dictionary encoding pays for text (flags, names) only: on float columns it is
                # tried, fails (every value differs) and doubles the writing time.
                text = [f.name for f in self._schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
                self._handle = pq.ParquetWriter(self.tmp, self._schema, use_dictionary=text)
            self._handle.write_table(pa.Table.from_pandas(df, schema=self._schema, preserve_index=False))
        else:
            first = self._handle is None
            if first:
                gz = self.tmp.name.endswith(".gz")
                self._handle = gzip.open(self.tmp, "wt", newline="") if gz else open(self.tmp, "w", newline="")
            df.to_csv(self._handle, sep=_csv_separator(self.path), index=False, header=first)

    def close(self) -> Path:
        """Finish the file and move it into place."""
        if self._handle is None:
            raise CatalogError(f"nothing was written to {self.path}")
        self._handle.close()
        try:
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.tmp.unlink(missing_ok=True)
            raise CatalogError(f"cannot write {self.path} ({exc.strerror or exc}): choose another output") from exc
        return self.path

    def abort(self) -> None:
        """Drop the temporary file."""
        if self._handle is not None:
            self._handle.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> CatalogChunkWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------- astropy -> pandas


def _table_to_frame(table: Table, label: str) -> pd.DataFrame:
    """Convert an astropy Table column by column; multidimensional columns are dropped with a warning."""
    data: dict[str, Any] = {}
    dropped: list[str] = []
    for name in table.colnames:
        values = _column_values(table[name], name)
        if values is None:
            dropped.append(name)
        else:
            data[name] = values
    if dropped:
        warnings.warn(
            f"{label}: dropped column(s) {', '.join(map(repr, dropped))} that hold more than one value per row "
            "(arrays or compound objects); flatten them first if you need them.",
            UserWarning,
            stacklevel=4,
        )
    return pd.DataFrame(data, index=pd.RangeIndex(len(table)))


def _column_values(col: Any, name: str) -> Any:
    """One astropy column as a 1-D array pandas can hold (NaN/NA for masked values), or None to drop it."""
    from astropy.table import Column
    from astropy.units import Quantity

    if getattr(col, "ndim", 1) != 1:
        return None
    if isinstance(col, Quantity):
        col = Column(col.value, name=name)
    if not isinstance(col, Column):
        return _mixin_values(col, name)
    raw = col.data
    mask = np.ma.getmaskarray(raw)
    arr = _native(np.ma.getdata(raw))
    kind = arr.dtype.kind
    if kind == "S":
        arr, kind = np.char.decode(arr, "utf-8", errors="replace"), "U"
    if kind in "UO":
        return _text_values(arr, mask)
    if not mask.any():
        return arr
    if kind == "f":
        out = arr.copy()
        out[mask] = np.nan
        return out
    if kind in "iu":
        if _norm(name) in (_ID_COLUMN, "source"):
            return pd.arrays.IntegerArray(arr.astype(np.int64), mask.copy())
        return np.where(mask, np.nan, arr.astype(np.float64))
    if kind == "b":
        return pd.arrays.BooleanArray(arr.astype(bool), mask.copy())
    return arr


def _native(arr: np.ndarray) -> np.ndarray:
    """Return ``arr`` in native byte order (FITS data is big-endian; pandas prefers native)."""
    if arr.dtype.byteorder in ("=", "|") or arr.dtype.kind in "SUO":
        return arr
    return arr.astype(arr.dtype.newbyteorder("="))


def _text_values(arr: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Strings as an object array with None where masked or empty, so pandas infers a string column."""
    if arr.dtype.kind == "U":
        missing = mask | (arr == "")
    else:
        missing = mask | np.array([v is None or v == "" for v in arr], dtype=bool)
    out = np.asarray(arr, dtype=object)
    if missing.any():
        out = np.where(missing, None, out)
    return out


def _mixin_values(col: Any, name: str) -> Any:
    """Convert a mixin column (Time, ...) through astropy's own pandas conversion; None when it spans several."""
    from astropy.table import Table

    try:
        converted = Table([col], names=[name]).to_pandas(index=False)
    except Exception:
        return None
    return converted.iloc[:, 0].to_numpy() if converted.shape[1] == 1 else None


# --------------------------------------------------------------------------- names


def _norm(name: Any) -> str:
    """Normalised column name: text, stripped, lower case."""
    return str(name).strip().lower()


def _id_names(columns: Mapping[str, str] | None) -> set[str]:
    """Normalised input names that will become ``source_id`` (read as text in CSV to keep precision)."""
    names = {_ID_COLUMN, "source"}
    if columns:
        names |= {_norm(k) for k, v in columns.items() if _norm(v) == _ID_COLUMN}
    return names


def _normalise_names(frame: pd.DataFrame, label: str) -> pd.DataFrame:
    """Lower-case and strip every column name; two names that become one is an error naming both."""
    new = [_norm(c) for c in frame.columns]
    _check_unique(
        list(frame.columns), new, label, "once names are made lower case and stripped", "rename or drop one of them"
    )
    frame.columns = new
    return frame


def _check_unique(old: Sequence[Any], new: Sequence[str], label: str, why: str, fix: str) -> None:
    """Raise when two input columns end up with the same name."""
    seen: dict[str, Any] = {}
    for before, after in zip(old, new, strict=False):
        if after in seen:
            raise CatalogError(
                f"columns {str(seen[after])!r} and {str(before)!r} of {label} both become {after!r} {why}: {fix}."
            )
        seen[after] = before


def _check_not_empty(frame: pd.DataFrame, label: str) -> None:
    """A catalogue with no columns or no rows cannot be clustered."""
    if frame.shape[1] == 0:
        raise CatalogError(f"{label} has no columns: check the export (it should have a header line of column names).")
    if frame.shape[0] == 0:
        raise CatalogError(
            f"{label} has no rows (0 stars): check the query or cone radius that produced it, and export again."
        )


def _apply_mapping(frame: pd.DataFrame, columns: Mapping[str, str], label: str) -> pd.DataFrame:
    """Rename the user's names to Gaia names; unknown keys and resulting duplicates are errors."""
    present = list(frame.columns)
    mapping: dict[str, str] = {}
    for key, value in columns.items():
        if _norm(key) not in frame.columns:
            raise CatalogError(
                f"columns= names {str(key)!r}, which is not a column of {label} ({_closest_text(_norm(key), present)}; "
                "names are matched case-insensitively): fix the key in columns= or data.columns in the config."
            )
        mapping[_norm(key)] = _norm(value)
    new = [mapping.get(c, c) for c in present]
    _check_unique(present, new, label, "after applying columns=", "map only one of them, or drop the other first")
    frame.columns = new
    return frame


def _apply_aliases(frame: pd.DataFrame) -> pd.DataFrame:
    """Rename known non-Gaia names (GAIA_ALIASES) whose Gaia name is not already present."""
    names = list(frame.columns)
    for alias, target in GAIA_ALIASES.items():
        if alias in names and target not in names:
            names[names.index(alias)] = target
    frame.columns = names
    return frame


def _closest_text(name: str, present: Sequence[str]) -> str:
    """'closest names present: ...' from difflib, or a short sample of the names when none is close."""
    by_lower = {p.lower(): p for p in reversed(present)}
    close = difflib.get_close_matches(_norm(name), list(by_lower), n=3, cutoff=0.6)
    if close:
        return "closest names present: " + ", ".join(repr(by_lower[c]) for c in close)
    sample = ", ".join(map(repr, present[:8])) + (", ..." if len(present) > 8 else "")
    return f"no close name; the {len(present)} columns present start {sample}"


# --------------------------------------------------------------------------- dtypes


def _simplify_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """Nullable/Arrow numeric columns -> numpy (float64 with NaN when values are missing); text flags -> bool."""
    for name in frame.columns:
        series = frame[name]
        dtype = series.dtype
        if name == _ID_COLUMN:
            continue
        if isinstance(dtype, pd.api.extensions.ExtensionDtype) and pd.api.types.is_bool_dtype(dtype):
            if not series.isna().any():
                frame[name] = series.to_numpy(dtype=bool)
        elif isinstance(dtype, pd.api.extensions.ExtensionDtype) and pd.api.types.is_numeric_dtype(dtype):
            frame[name] = _numeric_to_numpy(series)
        elif pd.api.types.is_object_dtype(dtype) and pd.api.types.infer_dtype(series, skipna=True) == "boolean":
            frame[name] = series.astype("boolean")
    return frame


def _numeric_to_numpy(series: pd.Series) -> np.ndarray:
    """A nullable numeric column as numpy: its own int/float dtype when complete, float64 with NaN otherwise."""
    if series.isna().any():
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    kind = "i" if pd.api.types.is_integer_dtype(series.dtype) else "f"
    return series.to_numpy(dtype=np.int64 if kind == "i" else np.float64)


def _fix_source_id(frame: pd.DataFrame) -> pd.DataFrame:
    """``source_id`` as exact int64 when complete, nullable Int64 when some are missing, untouched if not integral."""
    if _ID_COLUMN not in frame.columns:
        return frame
    series = frame[_ID_COLUMN]
    if pd.api.types.is_bool_dtype(series.dtype):
        return frame
    if pd.api.types.is_float_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = values[np.isfinite(values)]
        if len(finite) and (np.abs(finite).max() >= 2**53 or (finite != np.round(finite)).any()):
            # Not exact integers: kept as text, never as floats that look like (other) exact ids.
            _warn_inexact_ids(repr(float(finite[0])))
            frame[_ID_COLUMN] = pd.Series(
                [None if not np.isfinite(v) else repr(float(v)) for v in values], index=series.index, dtype=object
            )
            return frame
    if pd.api.types.is_object_dtype(series.dtype) or pd.api.types.is_string_dtype(series.dtype):
        text = series.dropna().astype(str)
        floating = text[text.str.fullmatch(r"\s*[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)\s*")]
        if len(floating):
            _warn_inexact_ids(floating.iloc[0])
            return frame
    if not (pd.api.types.is_integer_dtype(series.dtype) and not series.isna().any()):
        try:
            series = series.astype("Int64")
        except Exception:
            return frame
    frame[_ID_COLUMN] = series.astype(np.int64) if not series.isna().any() else series
    return frame


def _warn_inexact_ids(example: str) -> None:
    """Say once per read that ``source_id`` was written as floating point (ids then collide)."""
    logging.getLogger(__name__).warning(
        "source_id holds values written as floating-point numbers (e.g. %r), which cannot keep 19-digit Gaia ids "
        "exactly: different stars may share an id (repeats are flagged duplicate:source_id); export source_id as "
        "integers",
        example,
    )


def _numeric_problem(series: pd.Series, name: str, source: str) -> str | None:
    """Why a column is not usable as a numeric feature, or None when it is."""
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return f"column {name!r} of {source} holds True/False flags, not numbers"
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype):
        return None
    values = series.dropna()
    bad = values[pd.to_numeric(values, errors="coerce").isna()] if len(values) else values
    examples = list(dict.fromkeys(map(str, (bad if len(bad) else values).head(50))))[:3]
    shown = ", ".join(map(repr, examples)) if examples else "none present"
    return f"column {name!r} of {source} is not numeric (values like {shown}; dtype {dtype})"


# --------------------------------------------------------------------------- writing


def _write_csv(df: pd.DataFrame, tmp: Path) -> None:
    """CSV/TSV without the index; gzip when the name ends in .gz."""
    df.to_csv(tmp, sep=_csv_separator(tmp), index=False, compression="gzip" if tmp.name.endswith(".gz") else None)


def _write_parquet(df: pd.DataFrame, tmp: Path) -> None:
    """Parquet without the index."""
    df.to_parquet(tmp, index=False)


def _write_astropy(fmt: str) -> Callable[[pd.DataFrame, Path], None]:
    """Make a writer for one astropy format."""

    def write(df: pd.DataFrame, tmp: Path) -> None:
        _frame_to_table(df).write(tmp, format=_ASTROPY_FORMATS[fmt], overwrite=True)

    return write


_WRITERS: dict[str, Callable[[pd.DataFrame, Path], None]] = {
    "csv": _write_csv,
    "parquet": _write_parquet,
    "fits": _write_astropy("fits"),
    "votable": _write_astropy("votable"),
    "ecsv": _write_astropy("ecsv"),
}


def _frame_to_table(df: pd.DataFrame) -> Table:
    """DataFrame -> astropy Table: text as unicode columns, missing values masked (NaN kept for floats)."""
    from astropy.table import Table

    table = Table()
    for name in df.columns:
        table[str(name)] = _to_column(df[name], str(name))
    return table


def _to_column(series: pd.Series, name: str) -> Column:
    """One pandas column as an astropy (Masked)Column."""
    from astropy.table import Column

    dtype = series.dtype
    missing = series.isna().to_numpy()
    if pd.api.types.is_float_dtype(dtype):
        return Column(series.to_numpy(dtype=getattr(dtype, "numpy_dtype", dtype), na_value=np.nan), name=name)
    if pd.api.types.is_bool_dtype(dtype) or (
        pd.api.types.is_object_dtype(dtype) and pd.api.types.infer_dtype(series) == "boolean"
    ):
        return _masked(series.fillna(False).to_numpy(dtype=bool), missing, name)
    if pd.api.types.is_integer_dtype(dtype):
        return _masked(series.fillna(0).to_numpy(dtype=np.int64), missing, name)
    if pd.api.types.is_numeric_dtype(dtype):
        return _masked(series.to_numpy(), missing, name)
    text = np.array(
        ["" if m else str(v) for v, m in zip(series.to_numpy(dtype=object), missing, strict=False)], dtype=str
    )
    return _masked(text, missing, name)


def _masked(values: np.ndarray, missing: np.ndarray, name: str) -> Column:
    """A MaskedColumn when something is missing, a plain Column otherwise."""
    from astropy.table import Column, MaskedColumn

    return MaskedColumn(values, mask=missing, name=name) if missing.any() else Column(values, name=name)

"""Reading and writing catalogues: the real Gaia export, every format, in-memory tables, names, bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.table import MaskedColumn, Table

import grasp_dl.data.catalog as catalog
from grasp_dl.data.catalog import (
    GAIA_ALIASES,
    SUPPORTED_FORMATS,
    CatalogChunkWriter,
    iter_catalog,
    read_catalog,
    require_columns,
    require_numeric,
    write_catalog,
)
from grasp_dl.runtime.errors import CatalogError

BIG_ID = 2814893910504602496  # a real Gaia DR3 source_id: needs all 64 bits, float64 would corrupt it


def small_frame() -> pd.DataFrame:
    """Five stars with an exact 19-digit id, missing floats, an int, a bool flag and a string with a gap."""
    return pd.DataFrame(
        {
            "source_id": np.array([BIG_ID, BIG_ID + 1, BIG_ID + 2, 5, 6], dtype=np.int64),
            "ra": [346.68, 346.69, 346.70, 346.71, 346.72],
            "pmra": [1.75, np.nan, -0.25, 1e-3, np.nan],
            "phot_g_n_obs": np.array([300, 250, 120, 80, 40], dtype=np.int64),
            "duplicated_source": [False, True, False, False, True],
            "libname_gspphot": ["MARCS", None, "PHOENIX", "A", "MARCS"],
        }
    )


# --------------------------------------------------------------------------- the real archive export


def test_pal13_archive_export_reads_as_it_is(pal13_path: Path) -> None:
    df = read_catalog(pal13_path)
    assert df.shape == (123, 153)
    assert list(df.columns) == [c.strip().lower() for c in df.columns]
    assert {"source_id", "designation", "dist", "pmra", "libname_gspphot"} <= set(df.columns)
    # source_id exact int64, equal to the number inside the DESIGNATION text
    assert df["source_id"].dtype == np.int64
    assert df["source_id"].iloc[0] == BIG_ID
    assert (df["designation"] == "Gaia DR3 " + df["source_id"].astype(str)).all()
    # 2-parameter solutions have empty pmra/parallax cells -> NaN in a float column
    assert df["pmra"].dtype == np.float64
    two_param = df["astrometric_params_solved"] == 3
    assert two_param.sum() == 29
    assert df.loc[two_param, "pmra"].isna().all() and df.loc[~two_param, "pmra"].notna().all()
    assert (df["parallax"] < 0).any()
    assert pd.api.types.is_integer_dtype(df["phot_g_n_obs"])
    # True/False flags -> bool, text -> strings with NaN for empty cells
    assert df["has_xp_continuous"].dtype == bool and df["has_xp_continuous"].any()
    assert pd.api.types.is_string_dtype(df["libname_gspphot"])
    assert set(df["libname_gspphot"].dropna()) == {"MARCS", "PHOENIX", "A"}
    assert df["libname_gspphot"].isna().any()
    kinds = df.dtypes.map(lambda d: d.kind).value_counts().to_dict()
    assert kinds == {"f": 118, "i": 20, "b": 12, "O": 3}
    assert sum(pd.api.types.is_string_dtype(df[c]) for c in df.columns) == 3


def test_pal13_mean_proper_motion_is_near_the_literature(pal13_path: Path) -> None:
    df = read_catalog(pal13_path, required=["pmra", "pmdec", "ruwe"])
    require_numeric(df, ["pmra", "pmdec", "parallax", "ruwe"], source=str(pal13_path))
    bright = df[(df["phot_g_mean_mag"] < 20) & df["pmra"].notna()]
    assert abs(bright["pmra"].median() - 1.75) < 1.0 and abs(bright["pmdec"].median() - 0.10) < 1.0


# --------------------------------------------------------------------------- formats


ALL_SUFFIXES = [s for suffixes in SUPPORTED_FORMATS.values() for s in suffixes]


def test_supported_formats_are_the_five_of_the_design() -> None:
    assert set(SUPPORTED_FORMATS) == {"csv", "parquet", "fits", "votable", "ecsv"}
    assert ".fits.gz" in SUPPORTED_FORMATS["fits"] and ".csv.gz" in SUPPORTED_FORMATS["csv"]


@pytest.mark.parametrize("suffix", ALL_SUFFIXES)
def test_round_trip_through_every_format(tmp_path: Path, suffix: str) -> None:
    df = small_frame()
    path = write_catalog(df, tmp_path / f"cone{suffix}")
    assert [p.name for p in tmp_path.iterdir()] == [f"cone{suffix}"]  # no temporary file left
    back = read_catalog(path)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert back["source_id"].dtype == np.int64 and back["source_id"].iloc[0] == BIG_ID
    assert back["pmra"].dtype.kind == "f" and back["pmra"].isna().tolist() == [False, True, False, False, True]
    assert back["phot_g_n_obs"].dtype.kind == "i"
    assert back["duplicated_source"].dtype == bool
    assert pd.api.types.is_string_dtype(back["libname_gspphot"]) and back["libname_gspphot"].isna().sum() == 1


def test_gzipped_csv_is_really_gzipped(tmp_path: Path) -> None:
    path = write_catalog(small_frame(), tmp_path / "cone.csv.gz")
    with gzip.open(path, "rt") as handle:
        assert handle.readline().strip() == "source_id,ra,pmra,phot_g_n_obs,duplicated_source,libname_gspphot"


def test_pal13_round_trips_through_fits_and_votable(tmp_path: Path, pal13_path: Path) -> None:
    df = read_catalog(pal13_path)
    for name in ("pal13.fits", "pal13.vot"):
        back = read_catalog(write_catalog(df, tmp_path / name))
        pd.testing.assert_frame_equal(back, df, check_dtype=False)
        assert back["source_id"].dtype == np.int64


def test_format_argument_overrides_the_suffix(tmp_path: Path) -> None:
    path = write_catalog(small_frame(), tmp_path / "cone.dat", format="parquet")
    back = read_catalog(path, format="PARQUET")
    assert back["source_id"].tolist()[:3] == [BIG_ID, BIG_ID + 1, BIG_ID + 2]
    with pytest.raises(CatalogError, match=r"unknown format='hdf5'.*'csv', 'parquet', 'fits', 'votable', 'ecsv'"):
        read_catalog(path, format="hdf5")


def test_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "out.csv"
    path.write_text("source_id\n1\n")

    def broken_writer(df: pd.DataFrame, tmp: Path) -> None:
        tmp.write_text("source_id,ra\n1,")
        raise OSError("disk full")

    monkeypatch.setitem(catalog._WRITERS, "csv", broken_writer)
    with pytest.raises(CatalogError, match=r"cannot write .*out\.csv as csv: disk full") as info:
        write_catalog(small_frame(), path)
    assert isinstance(info.value.__cause__, OSError)
    assert path.read_text() == "source_id\n1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_write_into_a_missing_directory_names_it(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"directory .*nowhere does not exist"):
        write_catalog(small_frame(), tmp_path / "nowhere" / "out.parquet")


# --------------------------------------------------------------------------- in-memory sources


def test_dataframe_is_copied_not_modified() -> None:
    original = pd.DataFrame({"SOURCE_ID": [1, 2], " PMRA ": [1.0, 2.0], "Plx": [0.1, 0.2]})
    before = original.copy()
    df = read_catalog(original)
    assert list(df.columns) == ["source_id", "pmra", "parallax"]
    pd.testing.assert_frame_equal(original, before)
    df.loc[0, "pmra"] = 99.0
    assert original.loc[0, " PMRA "] == 1.0


def test_astropy_table_masked_values_become_nan() -> None:
    table = Table()
    table["SOURCE_ID"] = np.array([BIG_ID, 2, 3], dtype=np.int64)
    table["pmra"] = MaskedColumn([1.0, 2.0, 3.0], mask=[False, True, False])
    table["phot_g_n_obs"] = MaskedColumn([10, 20, 30], mask=[False, True, False])
    table["has_rvs"] = MaskedColumn([True, False, True], mask=[False, False, True])
    table["libname_gspphot"] = MaskedColumn(["MARCS", "x", ""], mask=[False, True, False])
    df = read_catalog(table)
    assert df["source_id"].dtype == np.int64 and df["source_id"].iloc[0] == BIG_ID
    assert df["pmra"].dtype == np.float64 and np.isnan(df["pmra"].iloc[1])
    assert df["phot_g_n_obs"].dtype == np.float64 and df["phot_g_n_obs"].isna().tolist() == [False, True, False]
    assert df["has_rvs"].tolist()[:2] == [True, False] and pd.isna(df["has_rvs"].iloc[2])
    assert df["libname_gspphot"].iloc[0] == "MARCS" and df["libname_gspphot"].iloc[1:].isna().all()


def test_astropy_table_multidimensional_column_is_dropped_with_a_warning() -> None:
    table = Table({"ra": [1.0, 2.0], "pm_vector": np.zeros((2, 2))})
    with pytest.warns(UserWarning, match=r"dropped column\(s\) 'pm_vector'"):
        df = read_catalog(table)
    assert list(df.columns) == ["ra"]


def test_object_with_data_attribute_is_read() -> None:
    class Sample:
        def __init__(self, data: object) -> None:
            self.data = data

    frame = pd.DataFrame({"RA": [1.0], "DEC": [2.0]})
    assert list(read_catalog(Sample(frame)).columns) == ["ra", "dec"]
    assert list(read_catalog(Sample(Table.from_pandas(frame))).columns) == ["ra", "dec"]
    with pytest.raises(CatalogError, match=r"cannot read a catalogue from a ndarray.*astropy Table"):
        read_catalog(np.zeros(3))


# --------------------------------------------------------------------------- names


def test_names_are_case_insensitive_and_stripped(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text(" SOURCE_ID ,Ra,PmRa,Phot_G_Mean_Mag\n2814893910504602496,1.5,2.5,18.0\n")
    df = read_catalog(path, required=["PMRA", "source_id"])
    assert list(df.columns) == ["source_id", "ra", "pmra", "phot_g_mean_mag"]
    assert df["source_id"].iloc[0] == BIG_ID


def test_columns_mapping_renames_user_names() -> None:
    raw = pd.DataFrame({"my_pm_ra": [1.0], "MY_PM_DEC": [2.0], "plx_value": [0.5], "Gmag": [18.0]})
    df = read_catalog(
        raw,
        columns={"MY_PM_RA": "pmra", "my_pm_dec": "PMDEC", "Plx_Value": "parallax"},
        required=["pmra", "pmdec", "parallax", "phot_g_mean_mag"],
    )
    assert list(df.columns) == ["pmra", "pmdec", "parallax", "phot_g_mean_mag"]
    assert df.iloc[0].tolist() == [1.0, 2.0, 0.5, 18.0]


def vizier_frame() -> pd.DataFrame:
    """The names VizieR's I/355/gaiadr3 gives (plus a plain RA/DEC pair)."""
    return pd.DataFrame(
        {
            "Source": [BIG_ID],
            "RA": [346.68],
            "DEC": [12.77],
            "pmRA": [1.7],
            "e_pmRA": [0.1],
            "pmDE": [0.1],
            "e_pmDE": [0.2],
            "Plx": [0.05],
            "e_Plx": [0.3],
            "Gmag": [19.0],
            "BP-RP": [0.8],
            "RUWE": [1.01],
        }
    )


VIZIER_AS_GAIA = [
    "source_id",
    "ra",
    "dec",
    "pmra",
    "pmra_error",
    "pmdec",
    "pmdec_error",
    "parallax",
    "parallax_error",
    "phot_g_mean_mag",
    "bp_rp",
    "ruwe",
]


def test_vizier_names_read_without_a_mapping() -> None:
    df = read_catalog(vizier_frame(), required=["pmra", "pmdec", "parallax", "phot_g_mean_mag", "bp_rp"])
    assert list(df.columns) == VIZIER_AS_GAIA
    assert df["source_id"].dtype == np.int64 and df["source_id"].iloc[0] == BIG_ID


def test_vizier_names_read_with_an_explicit_mapping() -> None:
    mapping = {"pmRA": "pmra", "pmDE": "pmdec", "Plx": "parallax", "Gmag": "phot_g_mean_mag", "BP-RP": "bp_rp"}
    df = read_catalog(vizier_frame(), columns=mapping)
    assert list(df.columns) == VIZIER_AS_GAIA


def test_vizier_icrs_names_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "vizier.tsv"
    path.write_text("RA_ICRS\tDE_ICRS\te_RA_ICRS\tpmRApmDEcor\n346.68\t12.77\t0.3\t-0.1\n")
    df = read_catalog(path)
    assert list(df.columns) == ["ra", "dec", "ra_error", "pmra_pmdec_corr"]
    assert df.loc[0, "pmra_pmdec_corr"] == -0.1


def test_short_magnitude_names_and_alias_precedence() -> None:
    df = read_catalog(pd.DataFrame({"G": [18.0], "BP": [18.5], "RP": [17.5]}))
    assert list(df.columns) == ["phot_g_mean_mag", "phot_bp_mean_mag", "phot_rp_mean_mag"]
    # an alias never overwrites the real Gaia column
    df = read_catalog(pd.DataFrame({"G": [1.0], "phot_g_mean_mag": [18.0]}))
    assert list(df.columns) == ["g", "phot_g_mean_mag"]
    assert all(key == key.lower() for key in GAIA_ALIASES)


# --------------------------------------------------------------------------- bad input


def test_missing_file_names_the_path_and_the_current_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CatalogError) as info:
        read_catalog("no_such_cone.csv")
    message = str(info.value)
    assert "no_such_cone.csv does not exist" in message and str(tmp_path) in message


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"is a directory, not a catalogue file"):
        read_catalog(tmp_path)


def test_unknown_suffix_lists_the_supported_ones(tmp_path: Path) -> None:
    path = tmp_path / "cone.h5"
    path.write_bytes(b"\x89HDF")
    with pytest.raises(CatalogError) as info:
        read_catalog(path)
    message = str(info.value)
    assert "cone.h5" in message and "(.h5)" in message
    assert ".parquet" in message and ".fits.gz" in message and ".vot" in message and "format=" in message


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bad.fits", b"this is not FITS"),
        ("bad.parquet", b"PAR1 truncated"),
        ("bad.vot", b"<VOTABLE><RESOURCE>"),
        ("bad.ecsv", b"# %ECSV 1.0\n# ---\n# garbage: [\nra dec\n1 2 3\n"),
        ("bad.csv", b"ra,dec\n1,2\n3,4,5,6\n"),
    ],
)
def test_corrupt_file_is_wrapped_with_its_name(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CatalogError, match=rf"cannot read .*{name} as \w+") as info:
        read_catalog(path)
    assert info.value.__cause__ is not None
    assert isinstance(info.value, ValueError)  # CatalogError stays catchable as ValueError


def test_empty_tables_are_refused(tmp_path: Path) -> None:
    header_only = tmp_path / "header_only.csv"
    header_only.write_text("source_id,ra,dec\n")
    with pytest.raises(CatalogError, match=r"header_only\.csv has no rows \(0 stars\)"):
        read_catalog(header_only)
    empty_file = tmp_path / "empty.csv"
    empty_file.write_text("")
    with pytest.raises(CatalogError, match=r"empty\.csv is empty"):
        read_catalog(empty_file)
    with pytest.raises(CatalogError, match=r"the DataFrame has no rows"):
        read_catalog(pd.DataFrame({"ra": pd.Series([], dtype=float)}))
    with pytest.raises(CatalogError, match=r"the DataFrame has no columns"):
        read_catalog(pd.DataFrame(index=[0, 1]))


def test_missing_required_column_names_it_a_close_match_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "cone.csv"
    path.write_text("ra,dec,pm_ra,parallax_err\n1,2,3,4\n")
    with pytest.raises(CatalogError) as info:
        read_catalog(path, required=["ra", "pmra", "parallax_error", "ruwe"])
    message = str(info.value)
    assert "cone.csv lacks the required columns" in message
    assert "'pmra' (closest names present: 'pm_ra'" in message
    assert "'parallax_error' (closest names present: 'parallax_err'" in message
    assert "'ruwe'" in message and "'ra' (" not in message
    assert "columns={'<your name>': '<gaia name>'}" in message and "data.columns" in message
    with pytest.raises(CatalogError, match=r"the catalogue lacks the required column 'pmdec'"):
        require_columns(pd.DataFrame({"pmra": [1.0]}), ["pmra", "pmdec"])
    require_columns(pd.DataFrame({"pmra": [1.0]}), "pmra")  # one name given as a plain string


def test_non_numeric_feature_column_shows_offending_values(tmp_path: Path) -> None:
    path = tmp_path / "gaia.csv"
    path.write_text('ra,pmra,has_rvs,n\n1.0,abc,True,1\n2.0,"1,2",False,2\n3.0,3.5,True,3\n4.0,,False,4\n')
    df = read_catalog(path)
    require_numeric(df, ["ra", "n"], source="gaia.csv")
    with pytest.raises(CatalogError) as info:
        require_numeric(df, ["ra", "pmra", "has_rvs"], source="gaia.csv")
    message = str(info.value)
    assert "column 'pmra' of gaia.csv is not numeric (values like 'abc', '1,2'" in message
    assert "'3.5'" not in message
    assert "column 'has_rvs' of gaia.csv holds True/False flags" in message
    assert "'ra'" not in message and message.endswith("fix the column or choose other features.")
    with pytest.raises(CatalogError, match=r"lacks the required column 'pmdec'"):
        require_numeric(df, ["pmdec"], source="gaia.csv")


def test_colliding_names_are_both_named(tmp_path: Path) -> None:
    path = tmp_path / "twice.csv"
    path.write_text("RA,ra,dec\n1,2,3\n")
    with pytest.raises(CatalogError, match=r"columns 'RA' and 'ra' of .*twice\.csv both become 'ra'"):
        read_catalog(path)
    collision = r"columns 'x' and 'pmra' of the DataFrame both become 'pmra' after applying columns="
    with pytest.raises(CatalogError, match=collision):
        read_catalog(pd.DataFrame({"x": [1.0], "pmra": [2.0]}), columns={"x": "pmra"})


def test_unknown_key_in_columns_names_it_and_close_names() -> None:
    with pytest.raises(CatalogError) as info:
        read_catalog(pd.DataFrame({"pm_ra": [1.0], "dec": [2.0]}), columns={"PMRA_": "pmra"})
    message = str(info.value)
    assert "'PMRA_'" in message and "not a column of the DataFrame" in message
    assert "closest names present: 'pm_ra'" in message


def test_source_id_with_gaps_stays_exact(tmp_path: Path) -> None:
    path = tmp_path / "gaps.csv"
    path.write_text(f"source_id,ra\n{BIG_ID},1\n,2\n{BIG_ID + 1},3\n")
    df = read_catalog(path)
    assert str(df["source_id"].dtype) == "Int64"
    assert df["source_id"].iloc[2] == BIG_ID + 1 and pd.isna(df["source_id"].iloc[1])


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".fits", ".ecsv"])
def test_iter_catalog_chunks_add_up_to_read_catalog(tmp_path: Path, pal13_path: Path, suffix: str) -> None:
    whole = read_catalog(pal13_path)
    path = tmp_path / f"pal13{suffix}"
    write_catalog(whole, path)
    keep = ["source_id", "ra", "dec", "pmra", "pmdec", "parallax", "phot_g_mean_mag"]
    chunks = list(iter_catalog(path, chunk_size=50, keep=keep))
    assert [len(c) for c in chunks] == [50, 50, 23]
    joined = pd.concat(chunks)
    np.testing.assert_array_equal(joined.index, np.arange(123))
    if suffix != ".ecsv":  # read whole and sliced: every column comes along
        assert sorted(joined.columns) == sorted(keep)
    assert (joined["source_id"].to_numpy() == whole["source_id"].to_numpy()).all()
    for name in keep[1:]:
        np.testing.assert_array_equal(joined[name].to_numpy(float), whole[name].to_numpy(float))


def test_iter_catalog_maps_names_like_read_catalog_and_keeps_near_misses(tmp_path: Path) -> None:
    path = tmp_path / "vizier.csv"
    pd.DataFrame(
        {"RA_ICRS": [1.0, 2.0, 3.0], "DE_ICRS": [4.0, 5.0, 6.0], "pm_RA": [0.1, 0.2, 0.3], "Other": [7, 8, 9]}
    ).to_csv(path, index=False)
    chunks = list(iter_catalog(path, {"pm_RA": "pmra"}, chunk_size=2, keep=["ra", "dec", "pmra"]))
    assert [list(c.columns) for c in chunks] == [["ra", "dec", "pmra"]] * 2
    # a wanted column the file lacks brings its close matches, so the error that follows can name them
    chunk = next(iter_catalog(path, chunk_size=2, keep=["ra", "pmra"]))
    assert "pm_ra" in chunk.columns and "other" not in chunk.columns
    with pytest.raises(CatalogError, match="pm_ra"):
        require_columns(chunk, ["pmra"])


def test_iter_catalog_refuses_empty_files_and_bad_chunk_sizes(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("ra,dec\n")
    with pytest.raises(CatalogError, match="no rows"):
        list(iter_catalog(path, chunk_size=10))
    with pytest.raises(CatalogError, match="chunk_size"):
        list(iter_catalog(path, chunk_size=0))


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_chunk_writer_appends_and_replaces_the_file_only_when_complete(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"out{suffix}"
    frames = [
        pd.DataFrame({"source_id": np.arange(i, i + 3), "x": np.arange(3) * 0.5, "flag": ["", "a", ""]}) for i in (0, 3)
    ]
    with CatalogChunkWriter(path) as writer:
        for frame in frames:
            writer.write(frame)
        assert not path.exists()  # only the temporary file exists while writing
    back = read_catalog(path)
    assert back["source_id"].tolist() == list(range(6)) and back["x"].tolist() == [0.0, 0.5, 1.0] * 2
    with pytest.raises(RuntimeError, match="interrupted"):
        with CatalogChunkWriter(path) as writer:
            writer.write(frames[0])
            raise RuntimeError("interrupted")
    assert len(read_catalog(path)) == 6  # the complete file from before is untouched
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    with pytest.raises(CatalogError, match=".csv or .parquet"):
        CatalogChunkWriter(tmp_path / "out.fits")


# --------------------------------------------------------------------------- issue 16: strict reading


def _both_ways(path: Path) -> list:
    """read_catalog and the streamed reader, as callables (they must agree on every bad file)."""
    return [lambda: read_catalog(path), lambda: list(iter_catalog(path, chunk_size=2, keep=["ra", "pmra"]))]


@pytest.mark.parametrize("header", ["ra,pmra,dec,pmra", "ra,pmra,dec,PMRA", "ra,pmra,dec, pmra"])
def test_repeated_column_names_are_refused_by_both_readers(tmp_path: Path, header: str) -> None:
    path = tmp_path / "twice.csv"
    path.write_text(header + "\n1,2,3,4\n5,6,7,8\n")
    for read in _both_ways(path):
        with pytest.raises(CatalogError, match=r"columns 'pmra' and '\s*pmra\s*'|columns 'pmra' and 'PMRA'"):
            read()


@pytest.mark.parametrize("line", [1, 2])
def test_a_row_with_extra_fields_is_refused_by_both_readers(tmp_path: Path, line: int) -> None:
    rows = ["ra,dec,pmra", "1,2,3", "4,5,6", "7,8,9"]
    rows[line] += ",99"
    path = tmp_path / "extra.csv"
    path.write_text("\n".join(rows) + "\n")
    for read in _both_ways(path):
        with pytest.raises(CatalogError, match="more fields than the header|Expected 3 fields") as info:
            read()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "content"),
    [("empty.csv", b""), ("csv.fits", b"ra,dec\n1,2\n"), ("csv.parquet", b"ra,dec\n1,2\n"), ("empty.parquet", b"")],
)
def test_unreadable_files_fail_alike_in_both_readers(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    messages = []
    for read in _both_ways(path):
        with pytest.raises(CatalogError) as info:
            read()
        messages.append(str(info.value))
        assert name in messages[-1] and "\n" not in messages[-1]
    assert messages[0].split("(")[0] == messages[1].split("(")[0]


def test_chunk_writer_turns_file_system_refusals_into_one_line(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.mkdir()  # os.replace cannot put a file onto a directory
    with pytest.raises(CatalogError, match="cannot write .*out.csv"), CatalogChunkWriter(target) as writer:
        writer.write(pd.DataFrame({"a": [1, 2]}))
    assert target.is_dir() and not [p for p in tmp_path.iterdir() if ".tmp" in p.name]

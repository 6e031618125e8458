"""``grasp-dl fetch``: a cluster's Gaia cone from the archive, kept in a Parquet cache that later runs read offline.

The cone is the one Vasiliev & Baumgardt (2021) measured members in (:mod:`grasp_dl.data.clusters`):
their published centre and radius. The archive caps what one job returns, so the cone is read in
pages of ``page_rows`` stars ordered by ``source_id``, each page starting after the last
``source_id`` of the one before (keyset paging: no page is read twice, however large the cone).
The client is anything with astroquery's ``launch_job_async(query)`` (the default is
``astroquery.gaia.Gaia``); tests give a fake one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from grasp_dl.data.clusters import literature_cluster
from grasp_dl.runtime.errors import GraspDLError

log = logging.getLogger(__name__)

#: The archive's table of Gaia DR3 sources.
GAIA_TABLE = "gaiadr3.gaia_source"
#: The columns the models and the prediction use (grasp_dl.inference.predict.PREDICTION_COLUMNS,
#: bp_g and g_rp derived from the magnitudes).
FETCH_COLUMNS = (
    "source_id",
    "ra",
    "dec",
    "parallax",
    "parallax_error",
    "pmra",
    "pmra_error",
    "pmdec",
    "pmdec_error",
    "pmra_pmdec_corr",
    "parallax_over_error",
    "ruwe",
    "astrometric_params_solved",
    "phot_g_mean_mag",
    "phot_bp_mean_mag",
    "phot_rp_mean_mag",
    "bp_rp",
    "phot_g_mean_flux_over_error",
    "phot_bp_mean_flux_over_error",
    "phot_rp_mean_flux_over_error",
)
#: Rows asked for in one archive job (anonymous asynchronous jobs may return up to 3 million).
PAGE_ROWS = 500_000


class ArchiveUnreachableError(GraspDLError):
    """The Gaia archive could not be reached (no network, or the archive is down)."""


def default_cache_dir() -> Path:
    """The Parquet cache of fetched cones: ``$GRASP_DL_CACHE`` or ``grasp-dl/gaia`` under the user's cache dir.

    Returns
    -------
    pathlib.Path
    """
    if os.environ.get("GRASP_DL_CACHE"):
        return Path(os.environ["GRASP_DL_CACHE"]).expanduser()
    try:
        import platformdirs
    except ImportError:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "grasp-dl" / "gaia"
    return Path(platformdirs.user_cache_dir("grasp-dl")) / "gaia"


def cone_query(
    ra: float,
    dec: float,
    radius_deg: float,
    *,
    columns: Sequence[str] = FETCH_COLUMNS,
    table: str = GAIA_TABLE,
    page_rows: int = PAGE_ROWS,
    after_source_id: int | None = None,
) -> str:
    """The ADQL of one page of a cone: at most ``page_rows`` stars after ``after_source_id``, by ``source_id``.

    Parameters
    ----------
    ra, dec, radius_deg : float
        Centre and radius of the cone, degrees.
    columns : sequence of str
        The columns to return.
    table : str
        The archive table.
    page_rows : int
        Rows of one page (ADQL ``TOP``).
    after_source_id : int, optional
        The last ``source_id`` of the previous page; None for the first page.

    Returns
    -------
    str
    """
    where = [f"1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra:.8f}, {dec:.8f}, {radius_deg:.8f}))"]
    if after_source_id is not None:
        where.append(f"source_id > {int(after_source_id)}")
    return (
        f"SELECT TOP {int(page_rows)} {', '.join(columns)}\nFROM {table}\nWHERE "
        + "\n  AND ".join(where)
        + "\nORDER BY source_id ASC"
    )


def gaia_client() -> Any:
    """astroquery's Gaia archive client (imported only here: importing it asks the archive for its status)."""
    try:
        from astroquery.gaia import Gaia
    except ImportError as error:
        raise GraspDLError(
            "grasp-dl fetch needs astroquery, which is not installed: pip install 'grasp-dl[gaia]'"
        ) from error
    return Gaia


def _unreachable(error: BaseException) -> ArchiveUnreachableError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return ArchiveUnreachableError(
        f"the Gaia archive cannot be reached ({type(error).__name__}: {reason[:200]}): run fetch where there is "
        "network, or give data.path"
    )


def _is_network_error(error: BaseException) -> bool:
    """Connection failures, timeouts and server errors (requests' are OSErrors too); a refused query (HTTP 4xx) is not."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(status, int) and 400 <= status < 500:
        return False
    if isinstance(error, (OSError, TimeoutError, ConnectionError)):
        return True
    return type(error).__module__.split(".")[0] in ("requests", "urllib3", "http")


def query_cone(
    ra: float,
    dec: float,
    radius_deg: float,
    *,
    client: Any = None,
    page_rows: int = PAGE_ROWS,
    columns: Sequence[str] = FETCH_COLUMNS,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Every Gaia source of a cone, page by page (:func:`cone_query`), as one table ordered by ``source_id``.

    Parameters
    ----------
    ra, dec, radius_deg : float
        The cone, degrees.
    client : object, optional
        Has ``launch_job_async(query)`` returning a job whose ``get_results()`` is an astropy Table;
        default :func:`gaia_client`.
    page_rows : int
        Rows asked for in one job; a page that comes back full is followed by the next.
    columns : sequence of str
        The columns to return.
    progress : callable, optional
        Called with (page number, rows so far) after each page.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    ArchiveUnreachableError
        When the archive cannot be reached.
    """
    client = gaia_client() if client is None else client
    pages: list[pd.DataFrame] = []
    after: int | None = None
    while True:
        query = cone_query(ra, dec, radius_deg, columns=columns, page_rows=page_rows, after_source_id=after)
        try:
            table = client.launch_job_async(query).get_results()
        except Exception as error:
            if _is_network_error(error):
                raise _unreachable(error) from error
            raise
        page = table.to_pandas()
        page.columns = [c.lower() for c in page.columns]
        pages.append(page)
        if progress is not None:
            progress(len(pages), sum(len(p) for p in pages))
        if len(page) < page_rows:
            break
        after = int(page["source_id"].max())
    return pd.concat(pages, ignore_index=True) if len(pages) > 1 else pages[0]


def cache_path(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the cone of a cluster (the table's name) is cached: ``<cache_dir>/<name>.parquet``.

    Parameters
    ----------
    name : str
        A cluster name in any usual spelling (:func:`grasp_dl.data.clusters.resolve_cluster_name`).
    cache_dir : path, optional
        Default :func:`default_cache_dir`.

    Returns
    -------
    pathlib.Path
    """
    from grasp_dl.data.clusters import resolve_cluster_name

    return Path(cache_dir or default_cache_dir()) / f"{resolve_cluster_name(name)}.parquet"


def fetch_cluster(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    client: Any = None,
    radius_arcmin: float | None = None,
    page_rows: int = PAGE_ROWS,
    refresh: bool = False,
) -> Path:
    """The cached cone of a cluster, queried from the archive only when it is not in the cache yet.

    Parameters
    ----------
    name : str
        A cluster of Vasiliev & Baumgardt (2021), any usual spelling.
    cache_dir : path, optional
        The Parquet cache (default :func:`default_cache_dir`).
    client : object, optional
        The archive client (:func:`query_cone`).
    radius_arcmin : float, optional
        The cone's radius; default the table's ``rmax`` (where the paper measured members).
    page_rows : int
        Rows of one archive job.
    refresh : bool
        Query again even when the cone is cached.

    Returns
    -------
    pathlib.Path
        The Parquet file; ``<name>.json`` beside it records the query.

    Raises
    ------
    CatalogError
        For a name not in the table.
    ArchiveUnreachableError
        When the cone is not cached and the archive cannot be reached.
    """
    cluster = literature_cluster(name)
    path = Path(cache_dir or default_cache_dir()) / f"{cluster.name}.parquet"
    if path.is_file() and not refresh:
        log.info("%s: cached at %s", cluster.name, path)
        return path
    radius = float(radius_arcmin if radius_arcmin is not None else cluster.rmax_arcmin) / 60.0
    log.info(
        "%s: querying the Gaia archive, cone of %.2f' around (%.5f, %.5f)", cluster.name, radius * 60, *cluster.center
    )
    start = time.perf_counter()
    stars = query_cone(cluster.ra, cluster.dec, radius, client=client, page_rows=page_rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".parquet.partial")
    stars.to_parquet(partial, index=False)
    partial.replace(path)
    record = {
        "cluster": cluster.name,
        "table": GAIA_TABLE,
        "ra": cluster.ra,
        "dec": cluster.dec,
        "radius_deg": radius,
        "rows": len(stars),
        "query": cone_query(cluster.ra, cluster.dec, radius, page_rows=page_rows),
        "fetched_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.perf_counter() - start, 1),
    }
    path.with_suffix(".json").write_text(json.dumps(record, indent=1))
    return path


def fetch_overrides(args: Sequence[str]) -> list[str]:
    """``grasp-dl fetch NGC_6397 M4 cache_dir=DIR``: the bare names become the override ``names=[...]``.

    Parameters
    ----------
    args : sequence of str
        The command line after ``fetch``.

    Returns
    -------
    list of str
        Hydra overrides.
    """
    names = [a for a in args if "=" not in a and not a.startswith("-")]
    rest = [a for a in args if a not in names]
    if not names:
        return rest
    quoted = ",".join("'" + n.replace("'", "") + "'" for n in names)
    return [f"names=[{quoted}]", *rest]


def fetch_command(cfg: Any) -> list[tuple[str, Path, int]]:
    """``grasp-dl fetch NAME ...``: fetch (or find cached) each named cluster's cone.

    Parameters
    ----------
    cfg : DictConfig
        ``conf/fetch.yaml``: ``names``, ``cache_dir``, ``radius_arcmin``, ``page_rows``, ``refresh``.

    Returns
    -------
    list of tuple
        (table name, cached file, rows) per cluster.
    """
    names = cfg.names
    names = [names] if isinstance(names, str) else list(names)
    done = []
    for name in names:
        path = fetch_cluster(
            str(name),
            cfg.get("cache_dir"),
            radius_arcmin=cfg.get("radius_arcmin"),
            page_rows=int(cfg.get("page_rows") or PAGE_ROWS),
            refresh=bool(cfg.get("refresh")),
        )
        import pyarrow.parquet as pq

        done.append((path.stem, path, pq.ParquetFile(path).metadata.num_rows))
    return done

"""Rolling windows: training windows and the served "now" come from the newest data, never from a constant.

Windows are whole UTC days. `data_end(dataset)` is the day boundary after the newest impression of a canonical
dataset (the end of its last day); `last_days(end, days)` is [end - days, end). The offline features hold a daily
snapshot at that same boundary (features/build.py snapshots every day boundary up to the first one past the last
event), so `features_end(features)` gives the same time from the feature directory serving loads: a service whose
`as_of` is `data` (AS_OF_DATA) serves at the end of the data its features were built from.

Everything here is read from files (the stage's dependencies), never from the wall clock, so a DVC stage that
derives its window sees the same window, and stays cached, until its data changes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.errors import UserError

DAY = timedelta(days=1)
AS_OF_DATA = "data"  # an `as_of` that means "the end of the newest day of the features' data"


def day_after(t: datetime) -> datetime:
    """The UTC day boundary after `t` (a time exactly at midnight belongs to the day it starts)."""
    t = t.astimezone(UTC)
    return datetime(t.year, t.month, t.day, tzinfo=UTC) + DAY


def newest_impression(dataset: Path) -> datetime:
    """The newest impression time of a canonical dataset (read from its `ts` column only).

    Raises:
        UserError: a directory that is not a dataset, or one without impressions.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from core.schema import Manifest, impression_files

    dataset = Path(dataset)
    Manifest.load(dataset)  # a one-line error for a directory that is not a dataset
    newest: datetime | None = None
    for part in impression_files(dataset):
        value = pc.max(pq.read_table(part, columns=["ts"])["ts"]).as_py()
        if value is not None and (newest is None or value > newest):
            newest = value
    if newest is None:
        raise UserError(f"{dataset / 'impressions'}: no impressions to derive a window from")
    return newest if newest.tzinfo is not None else newest.replace(tzinfo=UTC)


def data_end(dataset: Path) -> datetime:
    """The end of the newest day of `dataset`: the day boundary after its newest impression."""
    return day_after(newest_impression(dataset))


def last_days(end: datetime, days: int) -> tuple[datetime, datetime]:
    """[end - days, end)."""
    if days < 1:
        raise UserError(f"--days: must be >= 1, got {days}")
    return end - days * DAY, end


def training_window(
    dataset: Path,
    start: datetime | None = None,
    end: datetime | None = None,
    days: int | None = None,
    as_of: datetime | None = None,
) -> tuple[datetime, datetime, dict[str, object]]:
    """The window a training set covers: an explicit [start, end), or the last `days` whole days before `as_of`
    (default: the end of the newest day of `dataset`). Returns (start, end, how it was chosen, for meta.json).

    Raises:
        UserError: neither or both of --start/--end and --days, half of --start/--end, --as-of without --days.
    """
    explicit = start is not None or end is not None
    if explicit and days is not None:
        raise UserError("--days: give either --start/--end or --days, not both")
    if explicit:
        if start is None or end is None:
            raise UserError(f"--{'start' if start is None else 'end'}: missing (an explicit window needs both)")
        if as_of is not None:
            raise UserError("--as-of: only with --days (an explicit --start/--end is the window itself)")
        return _utc(start), _utc(end), {"rule": "explicit"}
    if days is None:
        raise UserError("--days: missing (give --days N, the last N days of the data, or --start and --end)")
    if as_of is not None:
        w_start, w_end = last_days(_utc(as_of), days)
        return w_start, w_end, {"rule": "last days before --as-of", "days": days}
    newest = newest_impression(dataset)
    w_start, w_end = last_days(day_after(newest), days)
    rule = {"rule": "last days of the data", "days": days, "newest_impression": newest.isoformat()}
    return w_start, w_end, rule


def features_end(features: Path) -> datetime:
    """The newest daily snapshot of an offline feature directory (user_stats), which features/build.py writes at the
    day boundary after the newest impression it was built from.

    Raises:
        UserError: no user_stats table, or an empty one.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(features) / "user_stats.parquet"
    if not path.is_file():
        raise UserError(f"{path}: not found (as_of: {AS_OF_DATA} reads the newest feature snapshot)")
    value = pc.max(pq.read_table(path, columns=["event_timestamp"])["event_timestamp"]).as_py()
    if value is None:
        raise UserError(f"{path}: no rows (as_of: {AS_OF_DATA} reads the newest feature snapshot)")
    if isinstance(value, datetime):
        return _utc(value)
    return datetime.fromtimestamp(float(value) / 1000, UTC)  # epoch ms


def resolve_as_of(as_of: str | None, features: Path | str | None, root: Path | None = None) -> str | None:
    """A served `as_of` as an ISO time: `data` (AS_OF_DATA) becomes the end of the features' data (`features`
    relative to `root`); any other value is returned as it is (None = the wall clock)."""
    if as_of != AS_OF_DATA:
        return as_of
    if features is None:
        raise UserError(f"recommender.as_of: {AS_OF_DATA!r} needs recommender.features (the snapshot it reads)")
    path = Path(features)
    if root is not None and not path.is_absolute():
        path = Path(root) / path
    return features_end(path).isoformat()


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)

"""Import MovieLens-100K (explicit movie ratings) into the canonical schema: one rating is one clicked impression.

Input (in `src`, each plain or .gz, no header, a row with the wrong field count is an error): `u.data`
(tab-separated user_id, item_id, rating, timestamp), `u.item` (|-separated, latin-1: movie_id, title, release_date,
video_release_date, IMDb_URL and 19 genre flags), `u.user` (|-separated: user_id, age, gender, occupation, zip_code).
MovieLens ids already start at 1 (0 is padding) and are kept as they are.

impressions: one per rating.
  impression_id     1.. in (timestamp, file order) order: a stable sort, so ratings within one second keep their
                    u.data order.
  request_id        one per distinct (user_id, timestamp), numbered in that order: ratings a user gave within the
                    same second came from one page.
  post_id           item_id; author_id = item_id (see posts).
  ts                timestamp (unix seconds) as UTC ms.
  surface 0, position -1 (not recorded), in_network False (no follow graph).
  actions           click = 1 (rating a movie is engaging with it), like = rating >= 4, not_interested =
                    rating <= 2; the other actions are all-zero and not in manifest.observed_actions.
  dwell_time        0 (not recorded).
  extras            x_rating (int8, 1..5).
users: one per u.user row.
  created_at        the user's first rating time (MovieLens has no sign-up date; the earliest rating time overall
                    for a user without ratings).
  country, language "unknown" (MovieLens only has a zip code, kept in x_zip_code).
  age_bucket        from age: "<18", "18-24", "25-34", "35-44", "45-54", "55+".
  activity          the user's rating count against the quartiles over all users: "low" (<= Q1), "medium"
                    (<= median), "high" (<= Q3), "very_high"; the synthetic feed's labels.
  is_author         False: users do not post.
  extras            x_age (int64), x_gender, x_occupation, x_zip_code (strings).
posts: one per movie.
  author_id         item_id. MovieLens has no authors; one author per movie keeps author-level features the movie's
                    own rather than pooling unrelated movies (as a single synthetic author would). Authors are not
                    users: author_id 5 is not user 5.
  created_at        release_date (UTC midnight), but no later than the movie's first rating (24 movies are rated
                    before their listed release); a blank release_date (1 movie) -> the earliest rating time.
  topic, topic_secondary  the first and second genre flag set, as genre ids 0..18 in u.genre order (0 is
                    "unknown"); -1 when there is none; topic_weight 1.0 with one genre, else 0.5.
  media_type        "video"; duration_ms is not known and left out.
  extras            x_title, x_imdb_url (strings); x_genres (int32 bitmask: bit g set for genre id g).
                    video_release_date is blank throughout and not kept.
follows: empty (MovieLens has no social graph).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from core.actions import DWELL_TIME
from core.schema import TS, Manifest
from features.importers.common import (
    action_columns,
    check_unique,
    constant,
    date_column,
    find_file,
    int_column,
    lookup,
    read_csv,
    request_ids,
    source_name,
    str_column,
    write_canonical,
)

RATING_FILE, ITEM_FILE, USER_FILE = "u.data", "u.item", "u.user"
RATING_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
# The u.genre vocabulary, in id order (0..18).
# fmt: off
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
# fmt: on
ITEM_COLUMNS = ("movie_id", "title", "release_date", "video_release_date", "IMDb_URL", *GENRES)
USER_COLUMNS = ("user_id", "age", "gender", "occupation", "zip_code")
LIKE_MIN_RATING, NOT_INTERESTED_MAX_RATING = 4, 2
# Lower age bound of each bucket, youngest first.
AGE_BUCKETS: tuple[tuple[int, str], ...] = (
    (0, "<18"), (18, "18-24"), (25, "25-34"), (35, "35-44"), (45, "45-54"), (55, "55+"),
)  # fmt: skip
ACTIVITY_LEVELS = ("low", "medium", "high", "very_high")
S_TO_MS = 1000
NEVER = np.iinfo(np.int64).max


def import_movielens(src: Path, out: Path) -> Manifest:
    """Maps the MovieLens-100K files in `src` onto the canonical schema and writes the dataset to `out` atomically.

    Raises:
        SchemaError: a missing file, a row with the wrong field count or a value that does not parse or fit;
            nothing is written then.
    """
    src, out = Path(src), Path(out)
    rating_path = find_file(src, RATING_FILE)
    item_path, user_path = find_file(src, ITEM_FILE), find_file(src, USER_FILE)

    ratings = _read_ratings(rating_path)
    items = read_csv(item_path, ITEM_COLUMNS, header=False, delimiter="|", quoting=False, encoding="latin1")
    users = read_csv(user_path, USER_COLUMNS, header=False, delimiter="|", quoting=False, encoding="latin1")
    item_ids = int_column(items, "movie_id", item_path, lo=1)
    check_unique(item_ids, "movie_id", item_path)
    user_ids = int_column(users, "user_id", user_path, lo=1)
    check_unique(user_ids, "user_id", user_path)
    item_pos = lookup(ratings["item_id"], item_ids, "item_id", rating_path, item_path)
    user_pos = lookup(ratings["user_id"], user_ids, "user_id", rating_path, user_path)

    return write_canonical(
        out,
        {
            "users": _users(users, user_path, user_ids, user_pos, ratings["ts_ms"]),
            "posts": _posts(items, item_path, item_ids, item_pos, ratings["ts_ms"]),
            "impressions": _impressions(ratings),
        },
        "movielens",
        ("click", "like", "not_interested"),
        {"src": source_name(src)},
    )


def _read_ratings(path: Path) -> dict[str, np.ndarray]:
    table = read_csv(path, RATING_COLUMNS, header=False, delimiter="\t", quoting=False)
    return {
        "user_id": int_column(table, "user_id", path, lo=1),
        "item_id": int_column(table, "item_id", path, lo=1),
        "rating": int_column(table, "rating", path, lo=1, hi=5),
        "ts_ms": int_column(table, "timestamp", path, lo=0) * S_TO_MS,
    }


def _users(table: pa.Table, path: Path, ids: np.ndarray, rating_pos: np.ndarray, ts_ms: np.ndarray) -> pa.Table:
    """The users table; `rating_pos` is each rating's row in `table`."""
    n = table.num_rows
    first_rating = _first_rating(n, rating_pos, ts_ms)
    created = np.where(first_rating == NEVER, ts_ms.min(), first_rating)
    counts = np.bincount(rating_pos, minlength=n)
    quartiles = np.quantile(counts, [0.25, 0.5, 0.75])
    level = (counts[:, None] > quartiles[None, :]).sum(axis=1)

    age = int_column(table, "age", path, lo=0, hi=150)
    bounds = np.array([lo for lo, _ in AGE_BUCKETS])
    bucket = np.searchsorted(bounds, age, side="right") - 1
    return pa.table(
        {
            "user_id": ids,
            "created_at": pa.array(created).cast(TS),
            "country": constant(n, "unknown"),
            "language": constant(n, "unknown"),
            "age_bucket": pa.array([AGE_BUCKETS[b][1] for b in bucket], pa.string()),
            "activity": pa.array([ACTIVITY_LEVELS[x] for x in level], pa.string()),
            "is_author": np.zeros(n, dtype=bool),
            "x_age": age,
            "x_gender": str_column(table, "gender"),
            "x_occupation": str_column(table, "occupation"),
            "x_zip_code": str_column(table, "zip_code"),
        }
    )


def _posts(table: pa.Table, path: Path, ids: np.ndarray, rating_pos: np.ndarray, ts_ms: np.ndarray) -> pa.Table:
    """The posts table; `rating_pos` is each rating's row in `table`."""
    n = table.num_rows
    released = date_column(table, "release_date", path, "%d-%b-%Y", blank_ok=True)
    released = released.fill_null(int(ts_ms.min())).to_numpy()
    # A movie exists at least from its first rating: a post must not be created after it was shown.
    created = np.minimum(released, _first_rating(n, rating_pos, ts_ms))

    flags = np.stack([int_column(table, g, path, lo=0, hi=1) for g in GENRES], axis=1)
    nth = np.cumsum(flags, axis=1) * flags  # k at the k-th set flag of a row, 0 elsewhere
    topic = np.where((nth == 1).any(axis=1), np.argmax(nth == 1, axis=1), -1)
    secondary = np.where((nth == 2).any(axis=1), np.argmax(nth == 2, axis=1), -1)
    return pa.table(
        {
            "post_id": ids,
            "author_id": ids,
            "created_at": pa.array(created).cast(TS),
            "topic": topic.astype(np.int32),
            "topic_secondary": secondary.astype(np.int32),
            "topic_weight": np.where(flags.sum(axis=1) > 1, 0.5, 1.0).astype(np.float32),
            "media_type": constant(n, "video"),
            "x_title": str_column(table, "title"),
            "x_imdb_url": str_column(table, "IMDb_URL"),
            "x_genres": (flags << np.arange(len(GENRES))).sum(axis=1).astype(np.int32),
        }
    )


def _first_rating(n: int, rating_pos: np.ndarray, ts_ms: np.ndarray) -> np.ndarray:
    """Earliest rating time of each of `n` rows (`rating_pos`: each rating's row); NEVER for a row without any."""
    first = np.full(n, NEVER, dtype=np.int64)
    np.minimum.at(first, rating_pos, ts_ms)
    return first


def _impressions(ratings: dict[str, np.ndarray]) -> pa.Table:
    order = np.argsort(ratings["ts_ms"], kind="stable")  # stable: ties keep file order
    user, item, rating, ts_ms = (ratings[k][order] for k in ("user_id", "item_id", "rating", "ts_ms"))
    n = len(order)
    return pa.table(
        {
            "impression_id": np.arange(1, n + 1, dtype=np.int64),
            "request_id": request_ids(user, ts_ms),
            "user_id": user,
            "post_id": item,
            "author_id": item,
            "ts": pa.array(ts_ms).cast(TS),
            "surface": np.zeros(n, dtype=np.int8),
            "position": np.full(n, -1, dtype=np.int32),
            "in_network": np.zeros(n, dtype=bool),
            **action_columns(
                n,
                {
                    "click": np.ones(n, dtype=np.int8),
                    "like": rating >= LIKE_MIN_RATING,
                    "not_interested": rating <= NOT_INTERESTED_MAX_RATING,
                },
            ),
            DWELL_TIME: np.zeros(n, dtype=np.float32),
            "x_rating": rating.astype(np.int8),
        }
    )

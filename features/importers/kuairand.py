"""Import KuaiRand-Pure (a Kuaishou short-video log with user and video features) into the canonical schema.

Input (in `src`, each plain or .gz): every `log_standard_*.csv`, concatenated in name order;
`user_features_pure.csv`; `video_features_basic_pure.csv`. KuaiRand ids are 0-based; canonical ids are id + 1
(0 is padding). Video authors are their own id space: KuaiRand does not link authors to users, so an `author_id`
can equal an unrelated `user_id`.

impressions: one per log row, in file order.
  impression_id     1-based row number over the concatenated logs.
  request_id        one per distinct (user_id, time_ms), numbered in order of first appearance: rows a user got in
                    the same millisecond were served by one request.
  user_id, post_id  user_id + 1, video_id + 1; author_id is the video's author_id + 1 (from the video features).
  ts                time_ms (UTC, ms).
  surface           tab (KuaiRand's page id, 0..14; fits the 16-code surface vocabulary).
  position          -1 (not recorded); in_network False (KuaiRand has no follow graph).
  actions           click <- is_click, like <- is_like, reply <- is_comment, share <- is_forward,
                    profile_click <- is_profile_enter, follow_author <- is_follow, not_interested <- is_hate,
                    dwell <- long_view (see DWELL_SOURCE). repost, quote, block_author, mute_author and report
                    have no counterpart: all-zero and not in manifest.observed_actions.
  dwell_time        play_time_ms / 1000 (seconds), for every row, clicked or not.
  extras            x_long_view (int8), x_play_time_ms, x_duration_ms, x_profile_stay_time, x_comment_stay_time
                    (int64), x_is_rand (int8), x_date (int32 yyyymmdd) and x_hourmin (int16) as the log states
                    them: the log's Asia/Shanghai date and hour, which the peers' protocols split by. They are not a
                    function of time_ms (1,673 rows of the shipped slice sit on another date than ts + 8 h gives).
users: one per user_features row.
  created_at        UTC midnight before the earliest log time_ms, minus register_days days (KuaiRand does not
                    publish the day register_days counts back from; this keeps every user created before their
                    first impression).
  country, language, age_bucket  "unknown" (not in KuaiRand).
  activity          user_active_degree as given (full_active, high_active, ...); blank or "UNKNOWN" -> "unknown".
  is_author         is_video_author == 1.
  extras            every other column as x_<name>: counts and flags as int64, the *_range buckets as strings;
                    x_onehot_feat0..17 int64 with -1 for a blank (feat4 and feat12..17 have blanks).
posts: one per video_features row.
  created_at        upload_dt at UTC midnight.
  topic, topic_secondary  first and second id of `tag`, -1 when absent (96 videos have no tag; 32 have three tags,
                    the third is kept only in x_tags); topic_weight 1.0 with at most one tag, else 0.5.
  media_type        "image" for upload_type LongPicture/PictureSet (picture posts: no duration), else "video".
  duration_ms       video_duration; blank -> 0, as the log's own duration_ms records for these posts.
  extras            x_video_type, x_upload_type, x_tags (strings); x_visible_status, x_server_width,
                    x_server_height, x_music_id (int64); x_music_type (int64, -1 for a blank).
follows: empty (KuaiRand has no follow graph).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.actions import DWELL_TIME
from core.schema import N_SURFACES, TS, Manifest
from features.importers.common import (
    DAY_MS,
    action_columns,
    bad_value,
    check_unique,
    constant,
    date_column,
    find_file,
    find_files,
    int_column,
    lookup,
    read_csv,
    request_ids,
    source_name,
    str_column,
    write_canonical,
)

LOG_PREFIX = "log_standard_"
USER_FILE = "user_features_pure.csv"
VIDEO_FILE = "video_features_basic_pure.csv"

LOG_COLUMNS = (
    "user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow", "is_comment",
    "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms", "profile_stay_time", "comment_stay_time",
    "is_profile_enter", "is_rand", "tab",
)  # fmt: skip
ONEHOT_COLUMNS = tuple(f"onehot_feat{i}" for i in range(18))
USER_COUNT_COLUMNS = ("is_lowactive_period", "is_live_streamer", "follow_user_num", "fans_user_num",
                      "friend_user_num", "register_days")  # fmt: skip
USER_RANGE_COLUMNS = ("follow_user_num_range", "fans_user_num_range", "friend_user_num_range", "register_days_range")
USER_COLUMNS = ("user_id", "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
                "follow_user_num", "follow_user_num_range", "fans_user_num", "fans_user_num_range", "friend_user_num",
                "friend_user_num_range", "register_days", "register_days_range", *ONEHOT_COLUMNS)  # fmt: skip
VIDEO_COLUMNS = ("video_id", "author_id", "video_type", "upload_dt", "upload_type", "visible_status",
                 "video_duration", "server_width", "server_height", "music_id", "music_type", "tag")  # fmt: skip

# dwell <- long_view: KuaiRand's own duration-aware "watched it" label (play >= duration for videos up to 18 s, else
# >= 18 s). A fixed play-time threshold does not work here: in the single-column UI videos autoplay, so 44% of the
# impressions without a click have play_time_ms >= 2 s and "dwell" would be more frequent than click (68% vs 44%);
# long_view, like the synthetic feed's dwell, nearly always follows a click (181 of 57,577 do not in the shipped slice).
DWELL_SOURCE = "long_view"
# is_forward is Kuaishou's "forward": sending the video to a chat or another app. Kuaishou has no re-broadcast to
# one's own followers like X's repost, so it is a share.
ACTION_SOURCE: dict[str, str] = {
    "click": "is_click",
    "like": "is_like",
    "reply": "is_comment",
    "share": "is_forward",
    "profile_click": "is_profile_enter",
    "follow_author": "is_follow",
    "dwell": DWELL_SOURCE,
    "not_interested": "is_hate",
}
FLAG_COLUMNS = (*ACTION_SOURCE.values(), "is_rand")
# Log columns kept as extras: source column -> numpy dtype.
IMPRESSION_EXTRAS: dict[str, type] = {
    "long_view": np.int8,
    "play_time_ms": np.int64,
    "duration_ms": np.int64,
    "profile_stay_time": np.int64,
    "comment_stay_time": np.int64,
    "is_rand": np.int8,
    "date": np.int32,
    "hourmin": np.int16,
}
PICTURE_UPLOAD_TYPES = ("LongPicture", "PictureSet")


def import_kuairand(src: Path, out: Path) -> Manifest:
    """Maps the KuaiRand-Pure files in `src` onto the canonical schema and writes the dataset to `out` atomically.

    Raises:
        SchemaError: a missing file, column or value that does not parse or fit; nothing is written then.
    """
    src, out = Path(src), Path(out)
    log_paths = find_files(src, LOG_PREFIX, ".csv")
    user_path, video_path = find_file(src, USER_FILE), find_file(src, VIDEO_FILE)

    logs = [(path, _read_log(path)) for path in log_paths]
    first_day_ms = min(int(log["time_ms"].min()) for _, log in logs) // DAY_MS * DAY_MS
    users, user_ids = _users(user_path, first_day_ms)
    posts, video_ids, author_ids = _posts(video_path)
    for path, log in logs:  # foreign keys are checked per file so the error names the right one
        lookup(log["user_id"], user_ids, "user_id", path, user_path)
        log["author_id"] = author_ids[lookup(log["video_id"], video_ids, "video_id", path, video_path)]
    impressions = _impressions({k: np.concatenate([log[k] for _, log in logs]) for k in logs[0][1]})

    return write_canonical(
        out,
        {"users": users, "posts": posts, "impressions": impressions},
        "kuairand",
        tuple(ACTION_SOURCE),
        {"src": source_name(src)},
    )


def _read_log(path: Path) -> dict[str, np.ndarray]:
    table = read_csv(path, LOG_COLUMNS, header=True)
    cols = {c: int_column(table, c, path, lo=0, hi=1) for c in FLAG_COLUMNS}
    for c in ("user_id", "video_id", "time_ms", "play_time_ms", "duration_ms", "profile_stay_time",
              "comment_stay_time"):  # fmt: skip
        cols[c] = int_column(table, c, path, lo=0)
    cols["hourmin"] = int_column(table, "hourmin", path, lo=0, hi=2359)
    cols["tab"] = int_column(table, "tab", path, lo=0, hi=N_SURFACES - 1)
    date_column(table, "date", path, "%Y%m%d")  # checked as a date, kept as the yyyymmdd number
    cols["date"] = int_column(table, "date", path)
    return cols


def _users(path: Path, first_day_ms: int) -> tuple[pa.Table, np.ndarray]:
    """The users table and the source user ids (row order)."""
    table = read_csv(path, USER_COLUMNS, header=True)
    n = table.num_rows
    ids = int_column(table, "user_id", path, lo=0)
    check_unique(ids, "user_id", path)
    register_days = int_column(table, "register_days", path, lo=0)
    degree = str_column(table, "user_active_degree")
    cols: dict[str, pa.Array | np.ndarray] = {
        "user_id": ids + 1,
        "created_at": pa.array(first_day_ms - register_days * DAY_MS).cast(TS),
        "country": constant(n, "unknown"),
        "language": constant(n, "unknown"),
        "age_bucket": constant(n, "unknown"),
        "activity": pc.if_else(pc.is_in(degree, pa.array(["", "UNKNOWN"])), "unknown", degree),
        "is_author": int_column(table, "is_video_author", path, lo=0, hi=1) == 1,
    }
    for c in USER_COUNT_COLUMNS:
        cols[f"x_{c}"] = int_column(table, c, path)
    for c in USER_RANGE_COLUMNS:
        cols[f"x_{c}"] = str_column(table, c)
    for c in ONEHOT_COLUMNS:
        cols[f"x_{c}"] = int_column(table, c, path, blank=-1)
    return pa.table(cols), ids


def _posts(path: Path) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """The posts table, the source video ids and their source author ids (row order)."""
    table = read_csv(path, VIDEO_COLUMNS, header=True)
    ids = int_column(table, "video_id", path, lo=0)
    check_unique(ids, "video_id", path)
    authors = int_column(table, "author_id", path, lo=0)
    tags = str_column(table, "tag")
    topic, secondary, weight = _topics(tags, path)
    upload_type = str_column(table, "upload_type")
    cols: dict[str, pa.Array | np.ndarray] = {
        "post_id": ids + 1,
        "author_id": authors + 1,
        "created_at": date_column(table, "upload_dt", path, "%Y-%m-%d").cast(TS),
        "topic": topic,
        "topic_secondary": secondary,
        "topic_weight": weight,
        "media_type": pc.if_else(pc.is_in(upload_type, pa.array(PICTURE_UPLOAD_TYPES)), "image", "video"),
        "duration_ms": int_column(table, "video_duration", path, lo=0, blank=0),
        "x_video_type": str_column(table, "video_type"),
        "x_upload_type": upload_type,
        "x_tags": tags,
        "x_visible_status": int_column(table, "visible_status", path),
        "x_server_width": int_column(table, "server_width", path, lo=0),
        "x_server_height": int_column(table, "server_height", path, lo=0),
        "x_music_id": int_column(table, "music_id", path),
        "x_music_type": int_column(table, "music_type", path, blank=-1),
    }
    return pa.table(cols), ids, authors


def _topics(tags: pa.Array, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First and second tag id (-1 when absent) and the primary topic's weight, from "39" / "20,43" / ""."""
    n = len(tags)
    topic, secondary = np.full(n, -1, dtype=np.int32), np.full(n, -1, dtype=np.int32)
    weight = np.ones(n, dtype=np.float32)
    for i, tag in enumerate(tags.to_pylist()):
        if not tag:
            continue
        parts = [p.strip() for p in tag.split(",")]
        if not all(p.isascii() and p.isdigit() and len(p) <= 9 for p in parts):  # 9 digits always fit int32
            raise bad_value(path, "tag", i, tag, "comma-separated tag ids")
        topic[i] = int(parts[0])
        if len(parts) > 1:
            secondary[i], weight[i] = int(parts[1]), 0.5
    return topic, secondary, weight


def _impressions(log: dict[str, np.ndarray]) -> pa.Table:
    n = len(log["user_id"])
    cols: dict[str, pa.Array | np.ndarray] = {
        "impression_id": np.arange(1, n + 1, dtype=np.int64),
        "request_id": request_ids(log["user_id"], log["time_ms"]),
        "user_id": log["user_id"] + 1,
        "post_id": log["video_id"] + 1,
        "author_id": log["author_id"] + 1,
        "ts": pa.array(log["time_ms"]).cast(TS),
        "surface": log["tab"].astype(np.int8),
        "position": np.full(n, -1, dtype=np.int32),
        "in_network": np.zeros(n, dtype=bool),
        **action_columns(n, {action: log[column] for action, column in ACTION_SOURCE.items()}),
        DWELL_TIME: (log["play_time_ms"] / 1000).astype(np.float32),
    }
    for c, dtype in IMPRESSION_EXTRAS.items():
        cols[f"x_{c}"] = log[c].astype(dtype)
    return pa.table(cols)

"""Fuzzing the served API: schemathesis generates requests from the OpenAPI schema `ember serve` publishes
(GET /docs.json) and sends them to a real server over the full pipeline of a nano world.

Every operation gets valid (positive) and schema-violating (negative) cases; the admin operations get them once as
generated (no or a random Authorization header) and once with the right bearer token, so the handlers behind the
token are fuzzed too (shares, promote and rollback really change the routing while the fuzz runs). Each response
must not be a 5xx and, where the schema documents its status, must match the documented body. A second test sends
hostile inputs schemathesis does not produce (lone surrogates, 200k-deep nesting, ids past int64, bodies over the
cap). Set EMBER_FUZZ_SEED to replay a run; the seed is in every failure message.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.reliability.conftest import AUTH, Server, pipeline_variants, serving

pytestmark = pytest.mark.slow  # the nano world takes a minute or two to build, the fuzz about as long

EXAMPLES = 100  # per operation, generation mode and (admin) token: ~1,500 requests in all
MIN_CASES = 1000
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def server(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("fuzz")
    with serving(world, root, pipeline_variants(world, root / "logs" / "exposure.jsonl")) as s:
        yield s


def test_generated_requests_never_get_a_5xx_and_match_the_schema(server: Server) -> None:
    fuzz_seed = int(os.environ.get("EMBER_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
    schema = schemathesis.openapi.from_url(f"{server.url}/docs.json")
    session = requests.Session()
    sent: Counter[str] = Counter()
    failures: list[str] = []

    def fuzz(operation: Any, mode: GenerationMode, headers: dict[str, str] | None) -> None:
        @seed(fuzz_seed)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # failures are collected, not raised: nothing to shrink
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def one(case: Any) -> None:
            response = case.call(base_url=server.url, session=session, headers=headers, timeout=30)
            sent[f"{operation.label} {mode.value}{' +token' if headers else ''} -> {response.status_code}"] += 1
            try:
                case.validate_response(response, checks=CHECKS, headers=headers)
            except Exception as err:  # schemathesis raises a group of check failures
                curl = case.as_curl_command(headers=headers, base_url=server.url)
                failures.append(f"{curl}\n  -> {response.status_code} {response.text[:300]!r}\n  {err}"[:1500])

        with suppress(Unsatisfiable):  # no parameters to violate (GET /healthz in negative mode)
            one()

    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        admin = operation.path.startswith("/admin")
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, None)
            if admin:
                fuzz(operation, mode, AUTH)

    total = sum(sent.values())
    table = "\n".join(f"{n:6d}  {key}" for key, n in sorted(sent.items()))
    print(f"seed {fuzz_seed}: {total} requests\n{table}")  # shown with -s, and kept in RELIABILITY.md
    assert not failures, f"seed {fuzz_seed}: {len(failures)} of {total} failed:\n" + "\n".join(failures[:10])
    assert total >= MIN_CASES, table
    assert any("+token -> 200" in key for key in sent), "the admin handlers behind the token were never reached"
    assert any(key.startswith("POST /recommend positive -> 200") for key in sent), table


_DEEP = 200_000
HOSTILE = [
    # FastAPI's json.loads takes a lone surrogate; the error naming it could not be encoded (a 500 before the fix).
    ("/admin/shares", b'{"\\ud800": 1.0}', AUTH, 400),
    ("/admin/shares", b'{"\\ud800": "x"}', AUTH, 400),
    ("/admin/promote", b'{"variant": "\\ud800"}', AUTH, 400),
    ("/admin/shares", b'{"ranker": ' + b"[" * _DEEP + b"]" * _DEEP + b"}", AUTH, 400),
    ("/admin/shares", b"\xff\xfe{}", AUTH, 400),
    ("/admin/shares", b'{"ranker": NaN, "popular": Infinity}', AUTH, 400),
    ("/recommend", b'{"user_id": 1, "seen_ids": ' + b"[" * _DEEP + b"]" * _DEEP + b"}", {}, 400),
    ("/recommend", b'{"user_id": "\\ud800"}', {}, 400),
    ("/recommend", b'{"user_id": 9223372036854775808}', {}, 400),  # past int64: the stores and tensors overflowed
    ("/recommend", b'{"user_id": -1}', {}, 400),
    ("/recommend", b'{"user_id": 0}', {}, 400),  # 0 is the padding id
    ("/recommend", b'{"user_id": 1, "surface": 16}', {}, 400),  # the ranker would clamp it to another surface
    ("/recommend", b'{"user_id": 1, "k": 1e400}', {}, 400),
    ("/recommend", b'{"user_id": 1, "seen_ids": [' + b"1," * 600_000 + b"1]}", {}, 413),
    ("/rank", b'{"user_id": 1, "post_ids": [99999999999999999999999]}', {}, 400),
    ("/rank", b'{"user_id": 1, "post_ids": [-5]}', {}, 400),
    ("/rank", b"\x00" * 1024, {}, 400),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status"), HOSTILE, ids=[f"{h[0]}-{i}" for i, h in enumerate(HOSTILE)]
)
def test_hostile_bodies_are_a_json_4xx_naming_the_field(
    server: Server, path: str, body: bytes, headers: dict[str, str], status: int
) -> None:
    r = server.http.post(path, content=body, headers={"content-type": "application/json", **headers})
    assert r.status_code == status, r.text[:500]
    assert set(r.json()) == {"error", "field"}, r.text[:500]


def test_the_server_still_answers_after_the_fuzz(server: Server) -> None:
    r = server.http.post("/recommend", json={"user_id": 1, "k": 5})
    assert r.status_code == 200 and len(r.json()["items"]) == 5, r.text[:500]
    assert httpx.get(f"{server.url}/readyz").status_code == 200

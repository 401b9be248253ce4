"""The API without a database: parameter validation, problem details, probes and OpenAPI."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from carbonflow.config import DatabaseSettings
from services.api.main import create_app
from services.api.settings import ApiSettings

pytestmark = pytest.mark.anyio

READINGS = "/v1/devices/apitest-dev/readings"
ENERGY = "/v1/devices/apitest-dev/energy"
INVALID = "/problems/invalid-parameters"
UNAVAILABLE = "/problems/service-unavailable"
DAY = {"from": "2026-03-29T00:00:00Z", "to": "2026-03-30T00:00:00Z"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # psycopg's async pool runs on asyncio


def closed_port() -> int:
    """A loopback port nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def app() -> FastAPI:
    # The lifespan is not run, so there is no pool: anything reaching the database is a 503.
    return create_app(ApiSettings(), DatabaseSettings(port=closed_port()))


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client


def assert_problem(response: httpx.Response, status: int, type_: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert isinstance(body, dict)
    assert body["status"] == status
    assert body["type"] == type_
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert body["instance"] == response.request.url.path
    return body


def error_codes(body: dict[str, object]) -> dict[str, str]:
    errors = body["errors"]
    assert isinstance(errors, list)
    return {e["name"]: e["code"] for e in errors}


async def test_liveness_needs_no_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readiness_without_a_pool_is_a_503_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert_problem(response, 503, UNAVAILABLE)
    assert response.headers["retry-after"] == "5"


async def test_readiness_when_the_database_is_down(app: FastAPI) -> None:
    app = create_app(
        ApiSettings(ready_timeout_s=0.3, db_acquire_timeout_s=0.3),
        DatabaseSettings(port=closed_port()),
    )
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://api") as client,
    ):
        assert (await client.get("/healthz")).status_code == 200
        body = assert_problem(await client.get("/readyz"), 503, UNAVAILABLE)
        assert "database" in str(body["detail"])
        assert_problem(await client.get("/v1/sites"), 503, UNAVAILABLE)


async def test_naive_timestamps_are_422_problems(client: httpx.AsyncClient) -> None:
    params = {"from": "2026-03-29T00:00:00", "to": "2026-03-30T00:00:00Z"}
    body = assert_problem(await client.get(READINGS, params=params), 422, INVALID)
    assert error_codes(body) == {"from": "timestamp_without_offset"}
    assert "no UTC offset" in str(body["detail"])


async def test_an_unencoded_plus_gets_a_hint(client: httpx.AsyncClient) -> None:
    # What arrives when a client writes "+01:00" into the URL unencoded.
    url = f"{READINGS}?from=2026-03-29T01:00:00+01:00&to=2026-03-30T00:00:00Z"
    body = assert_problem(await client.get(url), 422, INVALID)
    assert error_codes(body) == {"from": "timestamp_plus_as_space"}
    assert "%2B" in str(body["detail"])


async def test_an_encoded_plus_is_fine(client: httpx.AsyncClient) -> None:
    params = {"from": "2026-03-29T01:00:00+01:00", "to": "2026-03-30T00:00:00+02:00"}
    # Valid parameters get as far as the database, which this app does not have.
    assert_problem(await client.get(READINGS, params=params), 503, UNAVAILABLE)


async def test_missing_parameters_are_named(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get(READINGS), 422, INVALID)
    assert error_codes(body) == {"from": "missing", "to": "missing"}
    assert "required query parameter 'from' is missing" in str(body["detail"])


@pytest.mark.parametrize("path", [READINGS, ENERGY])
async def test_from_must_be_before_to(client: httpx.AsyncClient, path: str) -> None:
    params = {"from": "2026-03-30T00:00:00Z", "to": "2026-03-29T00:00:00Z"}
    body = assert_problem(await client.get(path, params=params), 422, INVALID)
    assert error_codes(body) == {"to": "range_empty"}
    equal = {"from": DAY["from"], "to": DAY["from"]}
    body = assert_problem(await client.get(path, params=equal), 422, INVALID)
    assert error_codes(body) == {"to": "range_empty"}


async def test_readings_range_and_limit_are_capped(client: httpx.AsyncClient) -> None:
    too_long = {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:01Z"}
    body = assert_problem(await client.get(READINGS, params=too_long), 422, INVALID)
    assert error_codes(body) == {"to": "range_too_long"}
    body = assert_problem(
        await client.get(READINGS, params={**DAY, "limit": "100001"}),
        422,
        INVALID,
    )
    assert error_codes(body) == {"limit": "limit_too_large"}
    body = assert_problem(await client.get(READINGS, params={**DAY, "limit": "0"}), 422, INVALID)
    assert error_codes(body) == {"limit": "greater_than_equal"}


async def test_limit_maximum_comes_from_settings() -> None:
    app = create_app(
        ApiSettings(readings_default_limit=10, readings_max_limit=50), DatabaseSettings()
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        response = await client.get(READINGS, params={**DAY, "limit": "51"})
    body = assert_problem(response, 422, INVALID)
    assert "maximum of 50" in str(body["detail"])


@pytest.mark.parametrize("bucket", ["2h", "1H", "", "day"])
async def test_unknown_buckets_are_refused(client: httpx.AsyncClient, bucket: str) -> None:
    response = await client.get(ENERGY, params={**DAY, "bucket": bucket})
    body = assert_problem(response, 422, INVALID)
    assert error_codes(body) == {"bucket": "enum"}
    assert "'1m', '15m', '1h' or '1d'" in str(body["detail"])


@pytest.mark.parametrize("bucket", ["1m", "15m", "1h", "1d"])
async def test_known_buckets_pass_validation(client: httpx.AsyncClient, bucket: str) -> None:
    response = await client.get(ENERGY, params={**DAY, "bucket": bucket})
    assert_problem(response, 503, UNAVAILABLE)


async def test_energy_needs_whole_minutes_and_few_enough_buckets(
    client: httpx.AsyncClient,
) -> None:
    odd = {"from": "2026-03-29T00:00:30Z", "to": "2026-03-30T00:00:00Z"}
    body = assert_problem(await client.get(ENERGY, params=odd), 422, INVALID)
    assert error_codes(body) == {"from": "not_whole_minute"}
    month = {"from": "2026-03-01T00:00:00Z", "to": "2026-03-31T00:00:00Z", "bucket": "1m"}
    body = assert_problem(await client.get(ENERGY, params=month), 422, INVALID)
    assert error_codes(body) == {"bucket": "too_many_buckets"}
    year = {"from": "2025-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z", "bucket": "1d"}
    body = assert_problem(await client.get(ENERGY, params=year), 422, INVALID)
    assert error_codes(body) == {"to": "range_too_long"}


async def test_malformed_ids_are_refused(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/v1/devices/-bad/readings", params=DAY), 422, INVALID)
    assert error_codes(body) == {"device_id": "string_pattern_mismatch"}
    body = assert_problem(await client.get("/v1/devices", params={"site_id": "a b"}), 422, INVALID)
    assert error_codes(body) == {"site_id": "string_pattern_mismatch"}


async def test_unknown_paths_and_methods_are_plain_http_problems(
    client: httpx.AsyncClient,
) -> None:
    body = assert_problem(await client.get("/v1/nothing-here"), 404, "about:blank")
    assert body["title"] == "Not Found"
    response = await client.post("/v1/sites")
    assert_problem(response, 405, "about:blank")
    assert response.headers["allow"] == "GET"


async def test_problem_types_are_described(client: httpx.AsyncClient) -> None:
    response = await client.get(INVALID)
    assert response.status_code == 200
    assert response.json()["status"] == 422
    assert_problem(await client.get("/problems/no-such-type"), 404, "/problems/not-found")


async def test_openapi_documents_problem_responses(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["info"]["title"] == "CarbonFlow API"
    assert schema["info"]["version"]
    energy = schema["paths"]["/v1/devices/{device_id}/energy"]["get"]
    assert {p["name"] for p in energy["parameters"]} == {"device_id", "from", "to", "bucket"}
    for status in ("404", "422", "503"):
        content = energy["responses"][status]["content"]
        assert set(content) == {"application/problem+json"}
        assert content["application/problem+json"]["schema"] == {
            "$ref": "#/components/schemas/Problem"
        }
    # FastAPI's own validation error shape is never served, so it is not documented either.
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert (await client.get("/docs")).status_code == 200

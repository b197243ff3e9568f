"""Property-based fuzzing of every operation in /openapi.json with schemathesis: valid (positive) and invalid
(negative) inputs generated from the schema must never get a 5xx, and every 4xx has the JSON error shape
(`{"error": {"type", "message"}}`, OpenAI's `{"error": {"message", "type", "param", "code"}}` under /v1).
Every operation of the schema is fuzzed, or the test fails naming it: an operation schemathesis cannot load or
generate inputs for is reported, never dropped (negative mode expects only the operations with nothing to
violate: no body, no parameter but a free-form path string).

Schemathesis is used as a Hypothesis strategy per operation (its pytest plugin does not support pytest 9 yet).
Bounded to fit CI: MAX_EXAMPLES per operation and mode, no shrinking, derandomised (the same cases each run).
"""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.core.result import Err

MAX_EXAMPLES = 25  # per operation and mode: ~14 positive + ~5 negative operations x 25 = ~500 requests
OPENAI_KEYS = {"message", "type", "param", "code"}


def operations(url: str) -> tuple[list, list[str]]:
    """(the operations schemathesis loaded, a line for each one it could not load)."""
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    ops, broken = [], []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            broken.append(f"{result.err()}")
        else:
            ops.append(result.ok())
    return ops, broken


def label(method: str, path: str) -> str:
    return f"{method.upper()} {path}"


def schema_operations(spec: dict) -> dict[str, dict]:
    """Every operation the raw schema lists: "METHOD /path" -> its operation object."""
    methods = {"get", "put", "post", "delete", "patch", "options", "head"}
    return {label(m, path): op for path, item in spec["paths"].items() for m, op in item.items() if m in methods}


def nothing_to_violate(op: dict) -> bool:
    """No request body and no parameter but free-form path strings: no input is invalid, so negative mode has
    nothing to generate."""
    return "requestBody" not in op and all(
        p["in"] == "path" and set(p.get("schema", {})) <= {"type", "title"} and p["schema"].get("type") == "string"
        for p in op.get("parameters", []))


def error_shape_problem(path: str, response) -> str | None:
    """Why a 4xx answer lacks the JSON error shape README promises, or None when it has it."""
    ctype = response.headers.get("content-type") or ""
    ctype = ", ".join(ctype) if isinstance(ctype, list) else ctype  # schemathesis keeps each header as a list
    if not ctype.startswith("application/json"):
        return f"content-type {ctype!r}, not JSON"
    try:
        body = response.json()
    except ValueError:
        return "the body is not JSON"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return "no 'error' object"
    openai = path == "/v1" or path.startswith("/v1/")
    if set(error) != (OPENAI_KEYS if openai else {"type", "message"}):
        return f"error keys {sorted(error)}"
    if openai and (error["type"] != "invalid_request_error" or not error["code"]):
        return f"OpenAI type {error['type']!r}, code {error['code']!r}"
    if not all(isinstance(error[k], str) and error[k] for k in ("type", "message")):
        return "an empty or non-string type or message"
    return None


@pytest.fixture(scope="module")
def cleanup(server):
    yield
    for ls in httpx.get(server.url + "/labelsets").json()["labelsets"]:  # leave the shared server as found
        httpx.delete(f"{server.url}/labelsets/{ls['name']}")


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_no_generated_input_gets_a_server_error(server, cleanup, mode):
    spec = schema_operations(httpx.get(server.url + "/openapi.json").json())
    ops, broken = operations(server.url)
    assert not broken, f"operations schemathesis could not load: {broken}"
    assert {label(op.method, op.path) for op in ops} == set(spec), "every operation of the schema is loaded"
    failures: list[str] = []
    calls: Counter[str] = Counter()
    untestable: set[str] = set()
    for op in ops:
        name = label(op.method, op.path)

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def run(case) -> None:
            response = case.call(base_url=server.url, timeout=60)
            calls[name] += 1
            problem = None
            if response.status_code >= 500:
                problem = "a server error"
            elif response.status_code >= 400:
                problem = error_shape_problem(op.path, response)
            if problem:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code} ({problem}): "
                                f"{response.text[:200]}\n  {case.as_curl_command()[:500]}")

        try:
            run()
        except Unsatisfiable:  # nothing to generate, e.g. a negative case for an operation without inputs
            untestable.add(name)
    print(f"{mode.value}: {len(calls)} operations fuzzed ({sum(calls.values())} requests); none generated for "
          f"{sorted(untestable)}")
    assert not failures, "\n".join(failures[:10])
    expected = {n for n, op in spec.items() if nothing_to_violate(op)} \
        if mode == schemathesis.GenerationMode.NEGATIVE else set()
    assert untestable == expected, f"no inputs generated for {sorted(untestable - expected)}; " \
                                   f"expected none for {sorted(expected - untestable)}"
    assert set(calls) == set(spec) - untestable, f"never called: {sorted(set(spec) - untestable - set(calls))}"
    assert httpx.get(server.url + "/readyz").status_code == 200

"""Label-set limits hold under concurrency: room is reserved before the classifier is computed and given back
when a PUT fails or its client leaves. Unit tests of the store, then 80 concurrent PUTs against the real server;
then the default limits (64 sets, 100 templates, built-in template sets counted) through the app."""

from __future__ import annotations

import asyncio
import base64
import random

import httpx
import pytest

from service.errors import PayloadTooLarge
from service.labelset_store import LabelSetStore, StoredLabelSet
from service.settings import Settings
from tests.service.fake_backend import COLOURS, png, ready_client
from tests.service.server import ServerProcess


def labelset(name: str, n_bytes: int) -> StoredLabelSet:
    return StoredLabelSet(name, ("x" * n_bytes,), (), "fp")


def test_a_reservation_counts_before_the_insert_and_is_released_on_failure():
    store = LabelSetStore(max_sets=2, max_bytes=1000)
    with store.reserve("a", 10) as a, store.reserve("b", 10):
        with pytest.raises(PayloadTooLarge, match="CLIP_MAX_LABELSETS"):  # both slots held, nothing stored yet
            with store.reserve("c", 10):
                pass
        a.commit(labelset("a", 10))
    assert [ls.name for ls in store.values()] == ["a"]  # b failed (never committed): its slot is free again
    with store.reserve("c", 10) as c:
        c.commit(labelset("c", 10))
    assert len(store) == 2


def test_bytes_of_pending_sets_count_and_replacing_charges_the_larger_definition():
    store = LabelSetStore(max_sets=10, max_bytes=100)
    with store.reserve("a", 60) as a:
        with pytest.raises(PayloadTooLarge, match="CLIP_LABELSET_CACHE_MB"):
            with store.reserve("b", 50):
                pass
        a.commit(labelset("a", 60))
    with store.reserve("a", 90) as a:  # replacing: a is charged 90, not 60 + 90
        a.commit(labelset("a", 90))
    with pytest.raises(PayloadTooLarge):
        with store.reserve("b", 20):
            pass


def test_a_full_store_still_accepts_a_replacement_and_a_delete_during_it_keeps_the_slot():
    store = LabelSetStore(max_sets=2, max_bytes=1000)
    for name in "ab":
        with store.reserve(name, 5) as r:
            r.commit(labelset(name, 5))
    with store.reserve("a", 7) as a:  # full, but a replacement needs no new slot
        store.delete("a")  # a DELETE while a's classifier is computed ...
        with pytest.raises(PayloadTooLarge):  # ... does not free a slot the pending PUT will fill
            with store.reserve("c", 5):
                pass
        a.commit(labelset("a", 7))
    assert sorted(ls.name for ls in store.values()) == ["a", "b"]


def test_random_interleavings_never_exceed_the_limits():
    """Many concurrent PUTs and DELETEs in random order: the stored count and bytes stay within the limits."""
    max_sets, max_bytes = 5, 400

    async def put(store: LabelSetStore, rng: random.Random) -> None:
        name, size = rng.choice("abcdefghij"), rng.randint(10, 150)
        try:
            with store.reserve(name, size) as r:
                for _ in range(rng.randint(0, 3)):
                    await asyncio.sleep(0)  # the classifier being computed: other PUTs run meanwhile
                if rng.random() < 0.2:
                    raise RuntimeError("encoder failed")
                r.commit(labelset(name, size))
        except (PayloadTooLarge, RuntimeError):
            pass
        if rng.random() < 0.2:
            store.delete(rng.choice("abcdefghij"))
        assert len(store) <= max_sets and sum(ls.text_bytes for ls in store.values()) <= max_bytes

    async def run(seed: int) -> LabelSetStore:
        rng, store = random.Random(seed), LabelSetStore(max_sets, max_bytes)
        await asyncio.gather(*(put(store, rng) for _ in range(300)))
        return store

    for seed in range(20):
        store = asyncio.run(run(seed))
        assert len(store) > 0 and not store._pending, seed  # something was stored; every reservation released


# --- through the real server ----------------------------------------------------------------------------------
MAX_SETS, PUTS = 8, 80


@pytest.fixture(scope="module")
def small_store_server(bundled_dir, tmp_path_factory):
    proc = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_MAX_LABELSETS": str(MAX_SETS)},
                         tmp_path_factory.mktemp("labelsets") / "server.log").wait_ready()
    yield proc
    proc.stop()


def test_concurrent_puts_of_new_names_store_at_most_the_limit(small_store_server):
    async def put_all() -> list[int]:
        async with httpx.AsyncClient(base_url=small_store_server.url, timeout=120,
                                     limits=httpx.Limits(max_connections=PUTS)) as client:
            async def put(i: int) -> int:  # distinct labels: each PUT computes its own classifier
                body = {"labels": [f"red circle {i}", f"blue square {i}", f"green star {i}"],
                        "templates": "simple"}
                return (await client.put(f"/labelsets/set-{i}", json=body)).status_code

            return await asyncio.gather(*(put(i) for i in range(PUTS)))

    statuses = asyncio.run(put_all())
    stored = httpx.get(small_store_server.url + "/labelsets", timeout=30).json()["labelsets"]
    assert len(stored) == MAX_SETS, f"{len(stored)} label sets stored against CLIP_MAX_LABELSETS={MAX_SETS}"
    assert statuses.count(200) == MAX_SETS and statuses.count(413) == PUTS - MAX_SETS, sorted(set(statuses))
    # full, a replacement still works and a new name is still refused
    name = stored[0]["name"]
    replaced = httpx.put(f"{small_store_server.url}/labelsets/{name}", json={"labels": ["pink heart"]}, timeout=60)
    assert replaced.status_code == 200 and replaced.json()["labels"] == ["pink heart"], replaced.text
    assert httpx.put(small_store_server.url + "/labelsets/one-more", json={"labels": ["a"]}).status_code == 413
    assert httpx.delete(f"{small_store_server.url}/labelsets/{name}").status_code == 204
    assert httpx.put(small_store_server.url + "/labelsets/one-more", json={"labels": ["a"]}).status_code == 200


# --- the defaults, through the app on a fake backend (the limits, not the model, are under test) ----------------
@pytest.fixture
def default_client():
    """An app with the default settings: CLIP_MAX_LABELSETS=64, CLIP_MAX_TEMPLATES=100."""
    with ready_client(Settings()) as (client, _):
        yield client


def test_the_65th_new_label_set_is_refused_while_a_replacement_still_works(default_client):
    c = default_client
    for i in range(64):
        r = c.put(f"/labelsets/set-{i}", json={"labels": [f"label {i}"]})
        assert r.status_code == 200, (i, r.text)
    refused = c.put("/labelsets/set-64", json={"labels": ["one too many"]})
    assert refused.status_code == 413, refused.text
    assert "CLIP_MAX_LABELSETS=64" in refused.json()["error"]["message"]
    replaced = c.put("/labelsets/set-7", json={"labels": ["new", "labels"], "templates": ["a {}"]})
    assert replaced.status_code == 200, replaced.text
    assert c.get("/labelsets/set-7").json()["labels"] == ["new", "labels"]
    assert len(c.get("/labelsets").json()["labelsets"]) == 64
    assert c.get("/labelsets/set-64").status_code == 404  # the refused PUT left nothing behind
    assert c.delete("/labelsets/set-0").status_code == 204
    assert c.put("/labelsets/set-64", json={"labels": ["fits now"]}).status_code == 200


@pytest.mark.parametrize("route", ["/classify", "/labelsets/templates"])
def test_templates_at_the_cap_are_accepted_and_over_it_refused(default_client, route):
    def send(n: int):
        body = {"labels": ["a", "b"], "templates": [f"{{}} number {j}" for j in range(n)]}
        if route == "/classify":
            return default_client.post(route, json={**body, "image": base64.b64encode(png(COLOURS["fresh"])).decode()})
        return default_client.put(route, json=body)

    at_cap = send(100)
    assert at_cap.status_code == 200, at_cap.text
    over = send(101)
    assert over.status_code == 422 and "CLIP_MAX_TEMPLATES" in over.json()["error"]["message"], over.text


@pytest.mark.parametrize("route", ["/classify", "/labelsets/builtin"])
def test_built_in_template_sets_count_against_the_cap(route):
    """CLIP_MAX_TEMPLATES=7: `simple` (open_clip's 7) fits, `openai_imagenet` (the paper's 80) does not."""
    with ready_client(Settings(max_templates=7)) as (c, _):
        def send(templates: str):
            body = {"labels": ["a", "b"], "templates": templates}
            if route == "/classify":
                return c.post(route, json={**body, "image": base64.b64encode(png(COLOURS["fresh"])).decode()})
            return c.put(route, json=body)

        assert send("simple").status_code == 200
        over = send("openai_imagenet")
        assert over.status_code == 422, f"80 built-in templates accepted under CLIP_MAX_TEMPLATES=7: {over.text}"
        assert "CLIP_MAX_TEMPLATES" in over.json()["error"]["message"], over.text

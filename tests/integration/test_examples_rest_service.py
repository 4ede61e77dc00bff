"""The example REST service under uvicorn on loopback: its endpoints, the job-executions
contract, ``Idempotency-Key`` on every POST, the fault switches and ``/metrics``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from commclient.cache import AsyncMemoryCache
from examples.rest_service import RestApp, create_app
from examples.serving import serve

pytestmark = pytest.mark.facade_async


@dataclass
class Served:
    app: RestApp
    http: httpx.Client
    base_url: str


@pytest.fixture
def served() -> Iterator[Served]:
    app = create_app()
    with serve(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as http:
        yield Served(app, http, base_url)


def post(served: Served, path: str, body: Any = None, key: str | None = None) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    return served.http.post(path, json=body, headers=headers)


EXECUTION = {
    "job_id": "send_due_reminders",
    "job_name": "Send due reminders",
    "scheduled_at": "2026-03-01T08:00:00+00:00",
    "correlation_id": "run-1",
}


# -- reminders, settings, conversations, batch jobs ---------------------------------------


def test_scheduled_reminders_are_the_unsent_ones_due_by_the_time_given(served: Served) -> None:
    store = served.app.service
    late = store.create("reminders", {"remind_at": "2026-03-01T09:00:00+00:00"})
    early = store.create("reminders", {"remind_at": "2026-03-01T08:00:00+01:00"})  # 07:00 UTC
    store.create("reminders", {"remind_at": "2026-03-02T08:00:00+00:00"})
    store.create("reminders", {"remind_at": "2026-03-01T06:00:00+00:00", "status": "sent"})

    due = served.http.get(
        "/api/reminders/scheduled", params={"due_before": "2026-03-01T09:00:00+00:00"}
    )
    assert due.status_code == 200
    assert [r["id"] for r in due.json()] == [early["id"], late["id"]]
    assert len(served.http.get("/api/reminders/scheduled/").json()) == 3
    naive = served.http.get("/api/reminders/scheduled", params={"due_before": "2026-03-01T09:00"})
    assert naive.status_code == 422
    assert "offset" in naive.text


def test_a_reminder_is_read_and_changed_by_id(served: Served) -> None:
    created = post(served, "/api/reminders/", {"remind_at": "2026-03-01T08:00:00+00:00"})
    assert created.status_code == 201
    reminder_id = created.json()["id"]
    assert created.json()["status"] == "scheduled"
    changed = served.http.patch(f"/api/reminders/{reminder_id}", json={"status": "sent"})
    assert changed.json()["status"] == "sent"
    assert served.http.get(f"/api/reminders/{reminder_id}").json()["status"] == "sent"
    missing = served.http.get("/api/reminders/999")
    assert missing.status_code == 404
    assert "reminders 999" in missing.json()["detail"]
    not_a_number = served.http.get("/api/reminders/abc")
    assert not_a_number.status_code == 422


def test_every_get_answers_head_with_its_status_and_headers_and_no_body(served: Served) -> None:
    served.app.service.create("users", {"name": "Ada"})
    for path in ("/api/users/1", "/api/users/", "/api/global-settings", "/healthz"):
        got = served.http.get(path)
        head = served.http.head(path)
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-length"] == got.headers["content-length"], path
    assert served.http.head("/api/users/2").status_code == 404
    assert served.http.head("/api/job-executions/1/start").status_code == 405  # a POST only


def test_global_settings_are_read_replaced_and_merged_with_or_without_the_slash(
    served: Served,
) -> None:
    assert served.http.get("/api/global-settings").json()["timezone"] == "UTC"
    served.http.patch("/api/global-settings/", json={"reminder_lead_minutes": 15})
    assert served.http.get("/api/global-settings/").json() == {
        "timezone": "UTC",
        "reminder_lead_minutes": 15,
    }
    served.http.put("/api/global-settings", json={"timezone": "Europe/Berlin"})
    assert served.http.get("/api/global-settings").json() == {"timezone": "Europe/Berlin"}
    assert served.http.put("/api/global-settings/", json=[1, 2]).status_code == 422


def test_conversations_are_filtered_by_any_field(served: Served) -> None:
    for status in ("closed", "open", "closed"):
        post(served, "/api/conversations/", {"status": status, "memory_status": "pending"})
    closed = served.http.get("/api/conversations/", params={"status": "closed"}).json()
    assert [c["id"] for c in closed] == [1, 3]
    served.http.patch("/api/conversations/3", json={"memory_status": "queued"})
    pending = served.http.get(
        "/api/conversations", params={"status": "closed", "memory_status": "pending"}
    ).json()
    assert [c["id"] for c in pending] == [1]


def test_batch_jobs_start_pending_and_leave_the_pending_list_when_done(served: Served) -> None:
    created = post(served, "/api/batch-jobs/", {"job_type": "memory_extraction", "payload": {}})
    assert created.status_code == 201
    job = created.json()
    assert job["status"] == "pending"
    assert [j["id"] for j in served.http.get("/api/batch-jobs/pending").json()] == [job["id"]]
    served.http.patch(f"/api/batch-jobs/{job['id']}", json={"status": "completed", "result": 1})
    assert served.http.get("/api/batch-jobs/pending").json() == []
    assert served.http.get(f"/api/batch-jobs/{job['id']}").json()["result"] == 1
    untyped = post(served, "/api/batch-jobs/", {"payload": {}})
    assert untyped.status_code == 422
    assert "job_type" in untyped.text


# -- job executions (the contract) ----------------------------------------------------------


def test_a_job_execution_goes_created_running_completed(served: Served) -> None:
    created = post(served, "/api/job-executions/", EXECUTION, key="k-create")
    assert created.status_code == 201
    record = created.json()
    assert record["status"] == "created"
    assert {k: record[k] for k in EXECUTION} == EXECUTION
    execution_id = record["id"]
    started = post(served, f"/api/job-executions/{execution_id}/start", key="k-start")
    assert started.json()["status"] == "running"
    assert started.json()["started_at"] is not None
    done = post(
        served, f"/api/job-executions/{execution_id}/complete", {"result": {"sent": 2}}, "k-done"
    )
    assert done.status_code == 200
    assert (done.json()["status"], done.json()["result"]) == ("completed", {"sent": 2})
    listed = served.http.get("/api/job-executions/").json()
    assert [(e["id"], e["status"]) for e in listed] == [(execution_id, "completed")]


def test_a_failed_run_keeps_its_error_and_traceback_and_cannot_move_again(
    served: Served,
) -> None:
    execution_id = post(served, "/api/job-executions/", EXECUTION).json()["id"]
    failed = post(
        served,
        f"/api/job-executions/{execution_id}/fail",
        {"error": "ValueError: bad", "traceback": "Traceback ..."},
    )
    assert failed.json()["status"] == "failed"
    assert failed.json()["traceback"] == "Traceback ..."
    again = post(served, f"/api/job-executions/{execution_id}/complete", {"result": None})
    assert again.status_code == 409
    assert "failed" in again.json()["detail"]
    assert served.http.get(f"/api/job-executions/{execution_id}").json()["status"] == "failed"


def test_bad_job_execution_requests_name_what_is_wrong(served: Served) -> None:
    misspelt = post(served, "/api/job-executions/", {**EXECUTION, "jobname": "x"})
    assert misspelt.status_code == 422
    assert "jobname" in misspelt.text
    missing = post(served, "/api/job-executions/", {"job_name": "x"})
    assert missing.status_code == 422
    assert "job_id" in missing.text
    assert post(served, "/api/job-executions/42/start").status_code == 404
    assert post(served, "/api/job-executions/42/fail", {"traceback": "t"}).status_code == 422
    assert served.http.patch("/api/job-executions/1", json={"status": "x"}).status_code == 405


# -- Idempotency-Key ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "collection"),
    [
        ("/api/job-executions/", EXECUTION, "job-executions"),
        ("/api/batch-jobs/", {"job_type": "cleanup"}, "batch-jobs"),
        ("/api/reminders/", {"remind_at": "2026-03-01T08:00:00+00:00"}, "reminders"),
        ("/api/conversations/", {"status": "open"}, "conversations"),
        ("/api/users/", {"name": "ada"}, "users"),
    ],
)
def test_every_create_applies_once_per_idempotency_key(
    served: Served, path: str, body: dict[str, Any], collection: str
) -> None:
    first = post(served, path, body, key="same")
    second = post(served, path, body, key="same")
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert len(served.app.service.records[collection]) == 1
    assert post(served, path, body, key="other").json()["id"] != first.json()["id"]


def test_a_repeated_transition_with_its_key_answers_as_the_first_time(served: Served) -> None:
    execution_id = post(served, "/api/job-executions/", EXECUTION).json()["id"]
    path = f"/api/job-executions/{execution_id}/complete"
    first = post(served, path, {"result": 1}, key="complete-1")
    replay = post(served, path, {"result": 1}, key="complete-1")
    assert (first.status_code, replay.status_code) == (200, 200)
    assert replay.json() == first.json()
    # Without the key, completing twice is the conflict it is.
    assert post(served, path, {"result": 1}).status_code == 409


def test_a_key_reused_for_another_request_is_refused(served: Served) -> None:
    post(served, "/api/batch-jobs/", {"job_type": "a"}, key="k")
    other_body = post(served, "/api/batch-jobs/", {"job_type": "b"}, key="k")
    assert other_body.status_code == 422
    assert "different request" in other_body.json()["detail"]
    other_path = post(served, "/api/conversations/", {"job_type": "a"}, key="k")
    assert other_path.status_code == 422
    assert len(served.app.service.records["batch-jobs"]) == 1
    assert served.app.service.records["conversations"] == {}
    assert post(served, "/api/batch-jobs/", {"job_type": "a"}, key="x" * 256).status_code == 400


def test_an_injected_5xx_is_not_stored_so_the_retry_applies(served: Served) -> None:
    served.app.faults.configure(fail_next=1)
    assert post(served, "/api/job-executions/", EXECUTION, key="retry-me").status_code == 503
    assert served.app.service.records["job-executions"] == {}
    retried = post(served, "/api/job-executions/", EXECUTION, key="retry-me")
    assert retried.status_code == 201
    assert len(served.app.service.records["job-executions"]) == 1


def test_concurrent_requests_with_one_key_apply_once(served: Served) -> None:
    # Each request stalls first, as when a client times out and retries during a stall.
    served.app.faults.configure(latency=0.3)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served.base_url, timeout=30) as http:
            return await asyncio.gather(
                *(
                    http.post(
                        "/api/batch-jobs/", json={"job_type": "x"}, headers={"Idempotency-Key": "c"}
                    )
                    for _ in range(8)
                )
            )

    responses = asyncio.run(burst())
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert len(served.app.service.records["batch-jobs"]) == 1


def test_after_a_failed_first_attempt_one_waiting_request_applies_and_the_rest_replay(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = served.app.service
    real_create = store.create
    calls = []

    def create_failing_once(collection: str, document: Any) -> dict[str, Any]:
        calls.append(collection)
        if len(calls) == 1:
            raise RuntimeError("the database went away")
        return real_create(collection, document)

    monkeypatch.setattr(store, "create", create_failing_once)
    served.app.faults.configure(latency=0.3)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served.base_url, timeout=30) as http:
            return await asyncio.gather(
                *(
                    http.post(
                        "/api/batch-jobs/", json={"job_type": "x"}, headers={"Idempotency-Key": "f"}
                    )
                    for _ in range(6)
                )
            )

    responses = asyncio.run(burst())
    assert sorted(r.status_code for r in responses) == [201] * 5 + [500]
    assert len({r.json()["id"] for r in responses if r.status_code == 201}) == 1
    assert len(store.records["batch-jobs"]) == 1
    assert len(calls) == 2  # the failed attempt and the one that applied; the rest replayed


# -- fault switches -----------------------------------------------------------------------


def test_fail_next_fails_that_many_requests_then_recovers(served: Served) -> None:
    state = served.http.put("/_admin/faults", json={"fail_next": 2, "retry_after": 1}).json()
    assert state["fail_next"] == 2
    first = served.http.get("/api/global-settings/")
    assert (first.status_code, first.headers["retry-after"]) == (503, "1")
    assert served.http.get("/api/global-settings/").status_code == 503
    assert served.http.get("/api/global-settings/").status_code == 200
    assert served.http.get("/_admin/faults").json()["injected_errors"] == 2


def test_an_outage_breaks_the_api_but_not_the_admin_endpoints_or_metrics(served: Served) -> None:
    served.http.put("/_admin/faults", json={"outage": True, "status": 502})
    assert served.http.get("/api/reminders/scheduled").status_code == 502
    assert post(served, "/api/batch-jobs/", {"job_type": "x"}).status_code == 502
    assert served.http.get("/healthz").status_code == 200
    assert served.http.get("/metrics").status_code == 200
    assert served.app.service.records["batch-jobs"] == {}
    assert served.http.delete("/_admin/faults").json()["outage"] is False
    assert served.http.get("/api/reminders/scheduled").status_code == 200


def test_error_rate_and_path_prefix_choose_what_fails(served: Served) -> None:
    served.app.faults.configure(error_rate=1.0, path_prefix="/api/batch-jobs")
    assert served.http.get("/api/batch-jobs/").status_code == 503
    assert served.http.get("/api/global-settings/").status_code == 200
    served.app.faults.configure(error_rate=0.0)
    assert served.http.get("/api/batch-jobs/").status_code == 200


def test_latency_holds_every_api_request(served: Served) -> None:
    served.app.faults.configure(latency=0.4)
    started = time.monotonic()
    assert served.http.get("/api/global-settings/").status_code == 200
    assert time.monotonic() - started >= 0.4
    with pytest.raises(httpx.ReadTimeout):
        served.http.get("/api/global-settings/", timeout=0.1)


def test_bad_fault_switches_are_refused_by_name(served: Served) -> None:
    for body, named in (
        ({"error_rate": 1.5}, "error_rate"),
        ({"status": 404}, "status"),
        ({"latency": -1}, "latency"),
        ({"latancy": 1}, "latancy"),
        ({"path_prefix": "api"}, "path_prefix"),
    ):
        refused = served.http.put("/_admin/faults", json=body)
        assert refused.status_code == 422, body
        assert named in refused.text
    with pytest.raises(ValueError, match="unknown fault switches"):
        served.app.faults.configure(outages=True)
    assert served.http.get("/api/global-settings/").status_code == 200


# -- metrics and cache invalidation ---------------------------------------------------------


def test_metrics_count_answers_per_route_and_status(served: Served) -> None:
    served.http.get("/api/reminders/1")
    served.app.faults.configure(fail_next=1)
    served.http.get("/api/reminders/1")
    text = served.http.get("/metrics").text
    assert (
        'rest_requests_total{method="GET",route="/api/reminders/{record_id}",status="404"} 1.0'
        in text
    )
    assert 'rest_requests_total{method="GET",route="unmatched",status="503"} 1.0' in text


def test_a_change_invalidates_the_cached_settings() -> None:
    cache = AsyncMemoryCache("t")
    app = create_app(cache=cache)

    async def scenario(base_url: str) -> tuple[Any, Any]:
        await cache.set("global_settings", {"timezone": "UTC"})
        async with httpx.AsyncClient(base_url=base_url) as http:
            await http.patch("/api/global-settings/", json={"timezone": "Asia/Tokyo"})
        return await cache.get_raw("global_settings"), app.service.settings()["timezone"]

    with serve(app) as base_url:
        cached, stored = asyncio.run(scenario(base_url))
    assert cached is None
    assert stored == "Asia/Tokyo"


def test_bodies_that_are_not_json_objects_are_refused(served: Served) -> None:
    not_json = served.http.post(
        "/api/batch-jobs/", content=b"{oops", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 422
    assert served.http.post("/api/conversations/", json=["a"]).status_code == 422
    assert served.http.patch("/api/reminders/1", json="sent").status_code == 422
    assert served.app.service.records["batch-jobs"] == {}


def test_the_service_continues_the_callers_correlation_id(served: Served) -> None:
    answer = served.http.get("/api/reminders/scheduled", headers={"X-Correlation-ID": "req-77"})
    assert answer.headers["X-Correlation-ID"] == "req-77"
    hostile = served.http.get("/api/reminders/scheduled", headers={"X-Correlation-ID": "x" * 500})
    assert len(hostile.headers["X-Correlation-ID"]) == 32

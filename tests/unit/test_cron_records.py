"""Run records: create → start → complete/fail, through recorder outages, never failing a job."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from datetime import datetime, timezone
from typing import Any

import pytest

pytest.importorskip("apscheduler")
pytest.importorskip("anyio")

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry

from commclient import correlation_id_ctx
from cron_migration import (
    MigrationExecutor,
    RunRecorder,
    current_scheduled_run,
    flush_run_records,
    migrated_job,
    shutdown_gracefully,
)
from tests.unit.cron_support import FakeRecorder, runs, sample, wait_until_async

pytestmark = pytest.mark.facade_async


def test_the_fake_recorder_is_a_run_recorder() -> None:
    assert isinstance(FakeRecorder(), RunRecorder)


def calls_of(recorder: FakeRecorder) -> dict[str, list[str]]:
    """Operations per run id, in the order the recorder accepted them."""
    per_run: dict[str, list[str]] = {}
    for operation, key in recorder.calls:
        run_id, _, kind = key.rpartition(":")
        assert kind == operation
        per_run.setdefault(run_id, []).append(kind)
    return per_run


def test_a_recorder_down_for_part_of_the_runs_still_gets_every_record() -> None:
    registry = CollectorRegistry()
    recorder = FakeRecorder()
    bodies: list[tuple[str | None, Any]] = []

    @migrated_job(timeout=10, recorder=recorder, registry=registry)
    async def tick() -> int:
        bodies.append((correlation_id_ctx.get(), current_scheduled_run()))
        return len(bodies)

    async def main() -> int:
        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
        scheduler.add_job(tick, "interval", seconds=0.05, id="tick", max_instances=5)
        scheduler.start()
        await wait_until_async(lambda: len(bodies) >= 3, what="runs before the outage")
        recorder.down = True
        down_at = len(bodies)
        await wait_until_async(lambda: len(bodies) >= down_at + 10, what="runs in the outage")
        await wait_until_async(lambda: recorder.failures >= 3, what="failed deliveries")
        recorder.down = False
        await wait_until_async(lambda: len(bodies) >= down_at + 15, what="runs after the outage")
        report = await shutdown_gracefully(scheduler, timeout=10, records_timeout=30)
        assert report.cancelled == 0
        return report.records_pending

    assert asyncio.run(main()) == 0
    assert recorder.failures >= 3
    # Every run whose body ran is recorded, completed, with its own identity.
    assert runs(registry, "tick", "success") == len(bodies)
    executions = list(recorder.executions.values())
    assert len(executions) == len(bodies)
    assert {e.status for e in executions} == {"completed"}
    assert sorted(e.result for e in executions) == list(range(1, len(bodies) + 1))
    assert {e.correlation_id for e in executions} == {cid for cid, _ in bodies}
    assert {e.scheduled_at for e in executions} == {run.scheduled_at for _, run in bodies}
    assert {e.job_id for e in executions} == {"tick"}
    # Each run's operations arrived in order, each once.
    assert set(map(tuple, calls_of(recorder).values())) == {("create", "start", "complete")}
    assert sample(registry, "cron_run_records_pending") == 0
    assert sample(registry, "cron_run_records_dropped_total", {"reason": "refused"}) == 0


def test_a_failed_run_is_recorded_with_its_error_and_traceback() -> None:
    recorder = FakeRecorder()

    @migrated_job(recorder=recorder, registry=CollectorRegistry())
    def explode() -> None:
        raise ValueError("bad row 7")

    with pytest.raises(ValueError, match="bad row 7"):
        explode()
    assert asyncio.run(flush_run_records(10)) == 0
    (execution,) = recorder.executions.values()
    assert execution.status == "failed"
    assert execution.error == "ValueError: bad row 7"
    assert execution.traceback is not None
    assert 'raise ValueError("bad row 7")' in execution.traceback


def test_a_timed_out_run_is_recorded_as_failed() -> None:
    recorder = FakeRecorder()

    @migrated_job(timeout=0.1, recorder=recorder, registry=CollectorRegistry())
    async def stuck() -> None:
        await asyncio.sleep(30)

    with pytest.raises(TimeoutError):
        stuck()
    assert asyncio.run(flush_run_records(10)) == 0
    (execution,) = recorder.executions.values()
    assert execution.status == "failed"
    assert execution.error is not None
    assert "timeout of 0.1s" in execution.error


def test_a_full_buffer_drops_new_runs_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    recorder = FakeRecorder(down=True)

    @migrated_job(recorder=recorder, registry=registry, record_capacity=2)
    async def job() -> str:
        return "done"

    async def main() -> None:
        for _ in range(4):
            assert await job() == "done"  # the job never fails for its records
        assert sample(registry, "cron_run_records_pending") == 2
        recorder.down = False
        assert await flush_run_records(30) == 0

    with caplog.at_level(logging.ERROR, logger="cron_migration"):
        asyncio.run(main())
    assert sample(registry, "cron_run_records_dropped_total", {"reason": "buffer_full"}) == 2
    assert len(recorder.executions) == 2
    assert runs(registry, "job", "success") == 4
    dropped = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 2
    assert "buffer is full (2 runs)" in dropped[0].getMessage()


class RefusingRecorder(FakeRecorder):
    """Answers create with a 422: a permanent refusal."""

    async def create_job_execution(self, **kwargs: Any) -> str:
        error = RuntimeError("422 Unprocessable Entity")
        error.status_code = 422  # type: ignore[attr-defined]
        raise error


def test_a_permanently_refused_record_is_dropped_not_retried_forever() -> None:
    registry = CollectorRegistry()
    recorder = RefusingRecorder()

    @migrated_job(recorder=recorder, registry=registry)
    async def job() -> None:
        return None

    async def main() -> int:
        await job()
        return await flush_run_records(10)

    assert asyncio.run(main()) == 0  # a refusal retried forever would still be pending
    assert sample(registry, "cron_run_records_dropped_total", {"reason": "refused"}) == 1
    assert sample(registry, "cron_run_records_pending") == 0


def test_records_of_runs_under_a_thread_scheduler_are_delivered_too() -> None:
    recorder = FakeRecorder()

    @migrated_job(recorder=recorder, registry=CollectorRegistry())
    def legacy() -> int:
        return 7

    assert legacy() == 7  # no loop in this thread: runs on compat's loop
    from compat import run_sync

    assert run_sync(flush_run_records, 10) == 0
    (execution,) = recorder.executions.values()
    assert execution.status == "completed"
    assert execution.result == 7


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_neither_inherits_the_parents_records_nor_its_delivery_task() -> None:
    registry = CollectorRegistry()
    recorder = FakeRecorder(down=True)

    @migrated_job(recorder=recorder, registry=registry)
    async def job() -> str:
        return "parent"

    async def parent_run() -> None:
        await job()

    asyncio.run(parent_run())  # its records wait: the recorder is down
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it holds, then record a run of its own
        try:
            recorder.down = False
            outbox = job._outbox
            held = outbox.pending_operations if outbox is not None else -1
            gauge = sample(registry, "cron_run_records_pending")

            async def child_run() -> int:
                await job()
                return await flush_run_records(10)

            pending = asyncio.run(child_run())
            os.write(write_end, f"{held} {gauge:g} {pending} {len(recorder.executions)}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as pipe:
        held, gauge, pending, executions = map(int, pipe.read().split())
    assert held == 0  # the parent's two operations stayed with the parent
    assert gauge == 0  # nor does the child's gauge count them
    assert sample(registry, "cron_run_records_pending") == 1  # the parent's does
    assert pending == 0
    assert executions == 1  # only the child's own run
    recorder.down = False
    assert asyncio.run(flush_run_records(10)) == 0
    assert len(recorder.executions) == 1  # the parent's run, in the parent's recorder


def test_a_result_json_cannot_carry_is_recorded_as_its_repr() -> None:
    recorder = FakeRecorder()
    moment = datetime(2026, 6, 1, tzinfo=timezone.utc)

    @migrated_job(recorder=recorder, registry=CollectorRegistry())
    async def job() -> dict[str, Any]:
        return {"sent_at": moment}

    assert job() == {"sent_at": moment}  # the job's own caller still gets the object
    assert asyncio.run(flush_run_records(10)) == 0
    (execution,) = recorder.executions.values()
    assert execution.result == repr({"sent_at": moment})


class BuggyRecorder(FakeRecorder):
    """Its first start fails with a TypeError, as a recorder that cannot encode would."""

    refused = 0

    async def start_job_execution(self, execution_id: str, *, idempotency_key: str) -> None:
        if not self.refused:
            self.refused += 1
            raise TypeError("Object of type Widget is not JSON serializable")
        await super().start_job_execution(execution_id, idempotency_key=idempotency_key)


def test_a_recorder_that_refuses_its_arguments_does_not_hold_up_later_records() -> None:
    registry = CollectorRegistry()
    recorder = BuggyRecorder()

    @migrated_job(recorder=recorder, registry=registry)
    async def job() -> int:
        return 1

    async def main() -> int:
        await job()
        await job()
        return await flush_run_records(10)

    assert asyncio.run(main()) == 0  # a refusal retried forever would still be pending
    assert sorted(e.status for e in recorder.executions.values()) == ["completed", "created"]
    assert sample(registry, "cron_run_records_dropped_total", {"reason": "refused"}) == 1


def test_records_left_when_a_loop_closes_are_delivered_from_the_next_loop() -> None:
    recorder = FakeRecorder(down=True)

    @migrated_job(recorder=recorder, registry=CollectorRegistry())
    async def job() -> str:
        return "ran"

    async def first_loop() -> None:
        await job()
        await asyncio.sleep(0.05)  # the delivery task is retrying when the loop ends

    asyncio.run(first_loop())
    assert recorder.executions == {}
    recorder.down = False
    assert asyncio.run(flush_run_records(10)) == 0
    (execution,) = recorder.executions.values()
    assert execution.status == "completed"


class LosingRecorder(FakeRecorder):
    """Applies the first create, then fails as if its answer were lost on the way back."""

    lost = 0

    async def create_job_execution(self, **kwargs: Any) -> str:
        execution_id = await super().create_job_execution(**kwargs)
        if not self.lost:
            self.lost += 1
            raise ConnectionResetError("connection reset before the answer arrived")
        return execution_id


def test_a_create_whose_answer_was_lost_is_retried_with_the_same_key_and_recorded_once() -> None:
    recorder = LosingRecorder()

    @migrated_job(recorder=recorder, registry=CollectorRegistry())
    async def job() -> int:
        return 3

    async def main() -> int:
        await job()
        return await flush_run_records(10)

    assert asyncio.run(main()) == 0
    assert len(recorder.executions) == 1
    (execution,) = recorder.executions.values()
    assert execution.status == "completed"
    creates = [key for operation, key in recorder.calls if operation == "create"]
    assert len(creates) == 2
    assert len(set(creates)) == 1  # the retry carried the first attempt's idempotency key


def test_a_huge_result_or_error_is_cut_so_each_buffered_run_stays_bounded() -> None:
    from cron_migration._records import MAX_RECORDED_CHARACTERS

    recorder = FakeRecorder()
    huge = "x" * (MAX_RECORDED_CHARACTERS * 50)

    @migrated_job(recorder=recorder, registry=CollectorRegistry(), name="big")
    async def big() -> dict[str, str]:
        return {"export": huge}

    @migrated_job(recorder=recorder, registry=CollectorRegistry(), name="loud")
    async def loud() -> None:
        raise ValueError(huge)

    assert big() == {"export": huge}  # the caller still gets the whole result
    with pytest.raises(ValueError, match=r"^xxx"):
        loud()
    assert asyncio.run(flush_run_records(10)) == 0
    (completed,) = recorder.by_status("completed")
    (failed,) = recorder.by_status("failed")
    for text in (completed.result, failed.error, failed.traceback):
        assert isinstance(text, str)
        assert len(text) < MAX_RECORDED_CHARACTERS + 100
        assert text.endswith("characters in all]")
    assert completed.result.startswith('{"export": "xxx')
    assert failed.error.startswith("ValueError: xxx")


class PoisonedRecorder(FakeRecorder):
    """Answers the completion of its first execution with a 500, forever."""

    async def complete_job_execution(
        self, execution_id: str, *, result: Any, idempotency_key: str
    ) -> None:
        if execution_id == "1":
            error = RuntimeError("500 Internal Server Error")
            error.status_code = 500  # type: ignore[attr-defined]
            raise error
        await super().complete_job_execution(
            execution_id, result=result, idempotency_key=idempotency_key
        )


def test_a_record_rejected_forever_holds_up_no_other_and_is_given_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    recorder = PoisonedRecorder()
    count = itertools.count(1)

    @migrated_job(recorder=recorder, registry=registry, record_max_age=1.0)
    async def job() -> int:
        return next(count)

    async def main() -> int:
        scheduler = AsyncIOScheduler(executors={"default": MigrationExecutor()})
        scheduler.add_job(job, "interval", seconds=0.01, id="job", max_instances=5)
        scheduler.start()
        await wait_until_async(lambda: runs(registry, "job", "success") >= 81, what="81 runs")
        scheduler.pause()
        await wait_until_async(
            lambda: len(recorder.by_status("completed")) >= 80, what="the other 80 records"
        )
        report = await shutdown_gracefully(scheduler, timeout=5, records_timeout=30)
        return report.records_pending

    with caplog.at_level(logging.ERROR, logger="cron_migration"):
        assert asyncio.run(main()) == 0
    successes = int(runs(registry, "job", "success"))
    assert len(recorder.by_status("completed")) == successes - 1
    assert recorder.executions["1"].status == "running"  # its completion was given up
    assert sample(registry, "cron_run_records_dropped_total", {"reason": "expired"}) == 1
    (dropped,) = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert "kept rejecting complete" in dropped
    assert "500 Internal Server Error" in dropped


def test_a_recovery_is_noticed_by_the_probe_whatever_the_backoff_reached() -> None:
    # Any RunRecorder, not only one with a breaker to ask: here a plain fake one.
    from cron_migration._metrics import CronMetrics
    from cron_migration._records import RecordOutbox

    recorder = FakeRecorder(down=True)
    # A backoff of 60 s: only the probe (every 0.1 s here) can notice the recovery soon.
    outbox = RecordOutbox(
        recorder, CronMetrics(CollectorRegistry()), retry_initial=60, probe_interval=0.1
    )

    async def main() -> None:
        for n in range(20):
            finished_run(outbox, n)
        await wait_until_async(lambda: recorder.failures >= 20, what="every run to fail once")
        recorder.down = False
        # Once one run got through, the others, still in their 60 s backoff, try at once.
        await wait_until_async(
            lambda: len(recorder.by_status("completed")) == 20, timeout=10, what="the backlog"
        )
        # The recorder answered; the outbox counts a run delivered once its call returned.
        await wait_until_async(lambda: outbox.pending_runs == 0, what="the runs delivered")

    asyncio.run(main())


def finished_run(outbox: Any, number: int, *, started: bool = True) -> None:
    """Run ``run-{number}`` through ``outbox`` as a job does: opened, (started,) done."""
    from cron_migration._records import RunRecord

    record = RunRecord(f"run-{number}", "job", "job", None, f"cid-{number}")
    outbox.open(record)
    if started:
        outbox.start(record)
    outbox.complete(record, "done")


class HangingRecorder:
    """Every call hangs (a connection going nowhere) until ``answering`` is set; the calls
    that hung counted in ``hanging``, the executions completed listed in ``completed``."""

    def __init__(self) -> None:
        self.answering = False
        self.hanging = 0
        self.completed: list[str] = []

    async def _call(self) -> None:
        if not self.answering:
            self.hanging += 1
            await asyncio.Event().wait()  # a call made while down never returns

    async def create_job_execution(self, **kwargs: Any) -> str:
        await self._call()
        return str(kwargs["idempotency_key"])

    async def start_job_execution(self, execution_id: str, **kwargs: Any) -> None:
        await self._call()

    async def complete_job_execution(self, execution_id: str, **kwargs: Any) -> None:
        await self._call()
        self.completed.append(execution_id)

    async def fail_job_execution(self, execution_id: str, **kwargs: Any) -> None:
        await self._call()


def test_a_recorder_whose_calls_hang_is_noticed_when_it_answers_again() -> None:
    """Calls that hang instead of failing (connections going nowhere): before, 16 of them
    held every place until their 30 s call timeout, so nothing got through for up to 30 s
    after the recorder answered again."""
    from cron_migration._metrics import CronMetrics
    from cron_migration._records import RecordOutbox

    recorder = HangingRecorder()
    assert isinstance(recorder, RunRecorder)
    outbox = RecordOutbox(recorder, CronMetrics(CollectorRegistry()))  # 30 s call timeout

    async def main() -> None:
        for n in range(200):
            finished_run(outbox, n)
        # Every place held by a hanging call, and then some.
        await wait_until_async(lambda: recorder.hanging >= 16, what="16 calls to hang")
        recorder.answering = True
        # Well under the 30 s the hanging calls would take to time out.
        await wait_until_async(
            lambda: len(recorder.completed) == 200,
            timeout=20,
            what="the backlog after the recovery",
        )
        # The recorder answered; the outbox counts a run delivered once its call returned.
        await wait_until_async(lambda: outbox.pending_runs == 0, what="the runs delivered")

    asyncio.run(main())
    # Each run recorded once, whatever was sent again.
    assert sorted(recorder.completed) == sorted(f"run-{n}:create" for n in range(200))


def test_a_record_whose_calls_hang_while_others_are_answered_is_given_up() -> None:
    """One run's calls hang while the recorder answers every other run: sent again each
    time a later call is answered, it still ages, and is given up at record_max_age."""
    from cron_migration._metrics import CronMetrics
    from cron_migration._records import RecordOutbox, RunRecord

    registry = CollectorRegistry()
    completed: list[str] = []

    class OneRunHangs:
        async def create_job_execution(self, **kwargs: Any) -> str:
            if kwargs["correlation_id"] == "poisoned":
                await asyncio.Event().wait()
            return str(kwargs["idempotency_key"])

        async def start_job_execution(self, execution_id: str, **kwargs: Any) -> None:
            pass

        async def complete_job_execution(self, execution_id: str, **kwargs: Any) -> None:
            completed.append(execution_id)

        async def fail_job_execution(self, execution_id: str, **kwargs: Any) -> None:
            pass

    outbox = RecordOutbox(OneRunHangs(), CronMetrics(registry), max_age=2)

    def expired() -> float:
        return sample(registry, "cron_run_records_dropped_total", {"reason": "expired"})

    async def main() -> None:
        poisoned = RunRecord("poisoned", "job", "job", None, "poisoned")
        outbox.open(poisoned)
        outbox.complete(poisoned, "done")
        n = 0
        while expired() == 0 and n < 600:  # other runs, answered, meanwhile
            finished_run(outbox, n, started=False)
            n += 1
            await asyncio.sleep(0.05)
        assert expired() == 1
        await wait_until_async(lambda: len(completed) == n, what="every other run")
        # The recorder answered; the outbox counts a run delivered once its call returned.
        await wait_until_async(lambda: outbox.pending_runs == 0, what="the runs delivered")

    asyncio.run(main())


def test_an_outage_longer_than_record_max_age_expires_nothing() -> None:
    """The age limit counts only time the recorder accepted other records: before, a run
    failing through an outage longer than record_max_age was given up at its first
    failure after the recovery (a hung call sent again), lost though the recorder was
    back."""
    from cron_migration._metrics import CronMetrics
    from cron_migration._records import RecordOutbox

    registry = CollectorRegistry()
    # Hung calls noticed after 0.1 s, the age limit 1 s: an outage of many times that.
    recorder = HangingRecorder()
    outbox = RecordOutbox(
        recorder, CronMetrics(registry), max_age=1, stall_after=0.1, probe_interval=0.05
    )

    async def main() -> None:
        for n in range(200):
            finished_run(outbox, n)
        # The first 16 calls hang at once, then one per probe (0.05 s at most): 30 more
        # take over 1.5 s, longer than record_max_age.
        await wait_until_async(lambda: recorder.hanging >= 16 + 30, what="an outage of over 1.5 s")
        recorder.answering = True
        await wait_until_async(lambda: outbox.pending_runs == 0, timeout=20, what="the backlog")

    asyncio.run(main())
    assert sample(registry, "cron_run_records_dropped_total", {"reason": "expired"}) == 0
    assert len(recorder.completed) == 200


def test_a_recorder_slower_than_stall_after_but_answering_gets_each_call_once() -> None:
    """A healthy recorder whose answers take longer than ``stall_after`` (a REST service
    under load, 2-5 s a call): before, each answer made every older call still out count
    as lost, cancelled and sent again, and the outbox fell back to one new call per
    probe. Against the example REST service, one run a second with 2-5 s answers: 356
    requests for 90 operations, and the backlog grew by a run every 1.3 s."""
    from cron_migration._metrics import CronMetrics
    from cron_migration._records import RecordOutbox, RunRecord

    sent: dict[str, int] = {}
    slow_call_in = asyncio.Event()
    release_slow_call = asyncio.Event()

    class SlowRecorder:
        async def create_job_execution(self, **kwargs: Any) -> str:
            key = str(kwargs["idempotency_key"])
            sent[key] = sent.get(key, 0) + 1
            if kwargs["correlation_id"] == "warm-up":
                await asyncio.sleep(1.5)  # how long this recorder's answers take
            elif kwargs["correlation_id"] == "slow":
                slow_call_in.set()
                await release_slow_call.wait()  # slower than the others, not lost
            return key

        async def _answer(self, key: str) -> None:
            sent[key] = sent.get(key, 0) + 1

        async def start_job_execution(self, execution_id: str, **kwargs: Any) -> None:
            await self._answer(str(kwargs["idempotency_key"]))

        async def complete_job_execution(self, execution_id: str, **kwargs: Any) -> None:
            await self._answer(str(kwargs["idempotency_key"]))

        async def fail_job_execution(self, execution_id: str, **kwargs: Any) -> None:
            await self._answer(str(kwargs["idempotency_key"]))

    outbox = RecordOutbox(SlowRecorder(), CronMetrics(CollectorRegistry()), stall_after=0.05)

    def run(name: str) -> RunRecord:
        record = RunRecord(name, "job", "job", None, name)
        outbox.open(record)
        outbox.start(record)
        outbox.complete(record, "done")
        return record

    async def main() -> None:
        run("warm-up")
        await wait_until_async(lambda: outbox.pending_runs == 0, what="the first run")
        run("slow")
        await slow_call_in.wait()
        await asyncio.sleep(0.2)  # the slow call out for longer than stall_after
        # Runs made while the slow call is out are answered at once, and not held back.
        for n in range(5):
            run(f"fast-{n}")
        await wait_until_async(lambda: outbox.pending_runs == 1, what="the fast runs")
        release_slow_call.set()
        await wait_until_async(lambda: outbox.pending_runs == 0, what="the slow run")

    asyncio.run(main())
    assert len(sent) == 7 * 3
    # The warm-up's call may be sent again (how slow the recorder answers is not known
    # before its first answer); once it is, no call is.
    assert {key for key, times in sent.items() if times > 1} <= {"warm-up:create"}


def test_a_loop_closed_under_a_hanging_record_call_leaves_the_run_to_the_next_loop() -> None:
    """A loop closed without cancelling its tasks (an application's own loop, or in a
    forked child the loop of a thread that is gone): before, the delivery task destroyed
    with it raised from its cleanup ("no running event loop"; once the next loop had taken
    over, a release of that loop's semaphore, gone), an exception nothing could catch (a
    failure under pytest, in whichever test the collector ran). Its run's records wait for
    the next loop."""
    import gc

    from cron_migration._metrics import CronMetrics
    from cron_migration._records import RecordOutbox, RunRecord

    answering = [False]
    calls = [0]
    completed: list[str] = []

    class HangsUntilAnswering:
        async def create_job_execution(self, **kwargs: Any) -> str:
            calls[0] += 1
            if not answering[0]:
                await asyncio.Event().wait()
            return str(kwargs["idempotency_key"])

        async def start_job_execution(self, execution_id: str, **kwargs: Any) -> None:
            pass

        async def complete_job_execution(self, execution_id: str, **kwargs: Any) -> None:
            completed.append(execution_id)

        async def fail_job_execution(self, execution_id: str, **kwargs: Any) -> None:
            pass

    outbox = RecordOutbox(HangsUntilAnswering(), CronMetrics(CollectorRegistry()))
    record = RunRecord("run", "job", "job", None, "cid")

    async def queue() -> None:
        outbox.open(record)
        outbox.complete(record, "done")
        await wait_until_async(lambda: calls[0] >= 1, what="the call to hang")

    loop = asyncio.new_event_loop()
    loop.run_until_complete(queue())
    loop.close()  # its tasks neither cancelled nor ended
    del loop
    gc.collect()
    answering[0] = True

    async def flush() -> int:
        return await outbox.flush(asyncio.get_running_loop().time() + 10)

    assert asyncio.run(flush()) == 0
    assert completed == ["run:create"]
    gc.collect()  # the old loop's tasks, no longer held by the outbox either


def test_a_forked_child_lets_the_parents_delivery_tasks_go_quietly() -> None:
    """In a child forked while a call hung (from a thread other than the loop's), the
    parent's loop is gone and the outbox is emptied: before, the delivery task, collected
    later, released the semaphore the outbox no longer had, from its cleanup (an
    exception nothing could catch: a failure under pytest, in whichever test the collector
    ran)."""
    import gc

    from cron_migration._metrics import CronMetrics
    from cron_migration._records import RecordOutbox, RunRecord, _forget_after_fork

    calls = [0]

    class Hangs:
        async def create_job_execution(self, **kwargs: Any) -> str:
            calls[0] += 1
            await asyncio.Event().wait()
            return "never"

        async def start_job_execution(self, execution_id: str, **kwargs: Any) -> None:
            pass

        async def complete_job_execution(self, execution_id: str, **kwargs: Any) -> None:
            pass

        async def fail_job_execution(self, execution_id: str, **kwargs: Any) -> None:
            pass

    outbox = RecordOutbox(Hangs(), CronMetrics(CollectorRegistry()))
    record = RunRecord("run", "job", "job", None, "cid")

    async def queue() -> None:
        outbox.open(record)
        await wait_until_async(lambda: calls[0] >= 1, what="the call to hang")

    loop = asyncio.new_event_loop()
    loop.run_until_complete(queue())
    loop.close()  # in the child, the thread running it does not exist
    del loop
    _forget_after_fork()  # what the child runs
    gc.collect()
    assert outbox.pending_runs == 0


def test_a_record_whose_calls_hang_is_given_up_about_record_max_age_after_it_began() -> None:
    """Each hang of the record's own call counted as an outage of the recorder, so the
    time up to the next answer to another run did not count against its age: given up
    after about twice ``record_max_age`` (with the default 60 s, after some 120 s, past
    the 90 s the README gives)."""
    import time

    from cron_migration._metrics import CronMetrics
    from cron_migration._records import RecordOutbox, RunRecord

    registry = CollectorRegistry()
    max_age = 3.0

    class OneRunHangs:
        async def create_job_execution(self, **kwargs: Any) -> str:
            if kwargs["correlation_id"] == "poisoned":
                await asyncio.Event().wait()
            return str(kwargs["idempotency_key"])

        async def start_job_execution(self, execution_id: str, **kwargs: Any) -> None:
            pass

        async def complete_job_execution(self, execution_id: str, **kwargs: Any) -> None:
            pass

        async def fail_job_execution(self, execution_id: str, **kwargs: Any) -> None:
            pass

    outbox = RecordOutbox(OneRunHangs(), CronMetrics(registry), max_age=max_age)

    def expired() -> float:
        return sample(registry, "cron_run_records_dropped_total", {"reason": "expired"})

    async def main() -> float:
        poisoned = RunRecord("poisoned", "job", "job", None, "poisoned")
        outbox.open(poisoned)
        outbox.complete(poisoned, "done")
        began = time.monotonic()
        n = 0
        while expired() == 0:  # the recorder answers other runs all along
            finished_run(outbox, n, started=False)
            n += 1
            await asyncio.sleep(0.05)
        return time.monotonic() - began

    given_up_after = asyncio.run(main())
    # max_age, then the stall limit (1 s) of its last call, with room for a loaded
    # machine; before, twice max_age.
    assert given_up_after < max_age + 1.0 + 0.8


def test_a_few_runs_whose_calls_all_hang_are_delivered_soon_after_the_recorder_answers() -> None:
    """Fewer runs than the places among the 16, every call of theirs hanging (a recorder
    whose connections went nowhere, a quiet service): before, no call was left to try, so
    the recovery was noticed only when a hung call timed out (``call_timeout``, 30 s by
    default: 60 s here). The probe now sends the longest-hanging call again."""
    from cron_migration._metrics import CronMetrics
    from cron_migration._records import RecordOutbox

    recorder = HangingRecorder()
    outbox = RecordOutbox(recorder, CronMetrics(CollectorRegistry()), call_timeout=60)

    async def main() -> None:
        for n in range(3):
            finished_run(outbox, n, started=False)
        await wait_until_async(lambda: recorder.hanging >= 3, what="every run's call to hang")
        recorder.answering = True
        # Well under the 60 s the hanging calls would take to time out.
        await wait_until_async(lambda: outbox.pending_runs == 0, timeout=20, what="the runs")

    asyncio.run(main())
    assert sorted(recorder.completed) == [f"run-{n}:create" for n in range(3)]

"""The cron metric families of one registry, and the label children they hand out."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from commclient._metrics import DURATION_BUCKETS, metric_family

#: ``cron_job_runs_total`` outcomes.
OUTCOMES = (
    "success",
    "error",
    "timeout",
    "cancelled",
    "skipped_elsewhere",
    "skipped_no_lease",
    "abandoned",
)
#: The job's label: not ``job``, which Prometheus sets on every scraped series (the scrape
#: job) and, with the default ``honor_labels: false``, would replace.
JOB_LABEL = "cron_job"
#: ``cron_run_records_dropped_total`` reasons.
DROP_REASONS = ("buffer_full", "refused", "expired")
# Loop lag worth seeing starts well below the client's request durations.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class CronMetrics:
    """Every cron_migration family of one registry (None: the default one)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.runs = metric_family(
            registry,
            Counter,
            "cron_job_runs_total",
            "Cron job runs by outcome.",
            [JOB_LABEL, "outcome"],
        )
        self.duration = metric_family(
            registry,
            Histogram,
            "cron_job_duration_seconds",
            "How long cron job runs took, whatever their outcome.",
            [JOB_LABEL],
            buckets=DURATION_BUCKETS,
        )
        self.missed = metric_family(
            registry,
            Counter,
            "cron_job_missed_total",
            "Scheduled runs the scheduler skipped: later than their misfire grace time.",
            [JOB_LABEL],
        )
        self.abandoned = metric_family(
            registry,
            Counter,
            "cron_job_abandoned_runs_total",
            "Runs given up (timeout, shutdown) while their worker thread kept running; "
            "the thread counts against the job's max_instances until it returns.",
            [JOB_LABEL],
        )
        self.loop_lag = metric_family(
            registry,
            Histogram,
            "cron_event_loop_lag_seconds",
            "How late the scheduler's event loop ran a callback that was due.",
            [],
            buckets=LAG_BUCKETS,
        )
        self.records_pending = metric_family(
            registry,
            Gauge,
            "cron_run_records_pending",
            "Runs whose records are not yet delivered to the recorder.",
            [],
            # Every live worker's backlog adds up; an exited worker's is gone with it.
            multiprocess_mode="livesum",
        )
        self.records_dropped = metric_family(
            registry,
            Counter,
            "cron_run_records_dropped_total",
            "Runs whose records were given up, by reason: buffer_full, refused by the "
            "recorder for good, or expired (still rejected after the age limit).",
            ["reason"],
        )
        for reason in DROP_REASONS:
            self.records_dropped.labels(reason)

    def declare_job(self, job: str) -> None:
        """Create every series of ``job`` at 0.

        ``increase()`` needs a sample before the first increment: a series that appears
        at 1 shows no increase, so a job's first failure would fire no alert.
        """
        for outcome in OUTCOMES:
            self.runs.labels(job, outcome)
        self.duration.labels(job)
        self.abandoned.labels(job)
        self.declare_missed(job)

    def declare_missed(self, job: str) -> None:
        """Create ``cron_job_missed_total{job}`` at 0 (see :meth:`declare_job`)."""
        self.missed.labels(job)

    def count_run(self, job: str, outcome: str) -> None:
        self.runs.labels(job, outcome).inc()

"""Prometheus metrics for `/metrics`, named like vLLM's (docs/design/metrics.md) under `decodelab:`.

Every metric carries the `model_name` label; latency histograms and the speculative counters also
carry `method`. Speculative counters follow vLLM's spec-decode metrics: a *draft* is one verify step
that offered at least one drafted token, *draft tokens* the tokens offered along the verified chain,
*accepted tokens* those the target kept (decodelab `Stats.drafted` / `Stats.accepted`, per position).
Each app owns its registry, so several servers (or tests) in one process do not share counters.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # no `*_created` series next to each counter (as vLLM does)

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                   10.0, 20.0, 40.0, 80.0)


class Metrics:
    def __init__(self, model_name: str):
        self.model = model_name
        self.registry = r = CollectorRegistry()
        m, mm = ["model_name"], ["model_name", "method"]
        self.running = Gauge("decodelab:num_requests_running", "Requests the worker is running.", m, registry=r)
        self.waiting = Gauge("decodelab:num_requests_waiting", "Requests waiting in the queue.", m, registry=r)
        self.prompt_tokens = Counter("decodelab:prompt_tokens", "Prefill tokens processed.", m, registry=r)
        self.generation_tokens = Counter("decodelab:generation_tokens", "Generated tokens.", m, registry=r)
        self.success = Counter("decodelab:request_success", "Finished requests by finish reason.",
                               ["model_name", "finished_reason"], registry=r)
        self.ttft = self._histogram("decodelab:time_to_first_token_seconds", "Time to first token.", mm)
        self.itl = self._histogram("decodelab:inter_token_latency_seconds", "Time between output tokens.", mm)
        self.e2e = self._histogram("decodelab:e2e_request_latency_seconds", "Arrival to last token.", mm)
        self.queue = self._histogram("decodelab:request_queue_time_seconds", "Time spent waiting.", mm)
        self.drafts = Counter("decodelab:spec_decode_num_drafts", "Verify steps with a draft.", mm, registry=r)
        self.draft_tokens = Counter("decodelab:spec_decode_num_draft_tokens", "Drafted tokens offered.",
                                    mm, registry=r)
        self.accepted = Counter("decodelab:spec_decode_num_accepted_tokens", "Drafted tokens accepted.",
                                mm, registry=r)
        self.accepted_per_pos = Counter("decodelab:spec_decode_num_accepted_tokens_per_pos",
                                        "Accepted drafted tokens by draft position.",
                                        ["model_name", "method", "position"], registry=r)
        self._children: dict[str, tuple] = {}  # method → its per-token counters (on_tokens)

    def _histogram(self, name: str, doc: str, labels: list[str]) -> Histogram:
        return Histogram(name, doc, labels, buckets=LATENCY_BUCKETS, registry=self.registry)

    def track(self, scheduler) -> None:
        """Read the running / waiting gauges from the scheduler at scrape time."""
        self.running.labels(self.model).set_function(lambda: scheduler.running)
        self.waiting.labels(self.model).set_function(lambda: scheduler.waiting)

    def on_tokens(self, job, event, previous: float | None, now: float, first: bool) -> None:
        """Called by the scheduler for each event that carries tokens (the per-token path: labelled
        children are looked up once per method, not once per call)."""
        k = len(event.token_ids)
        tokens, ttft, itl = self._per_token(job.method)
        tokens.inc(k)
        if first:
            ttft.observe(now - job.created)
        if previous is not None:  # the event's tokens arrived together: spread the gap over them
            for _ in range(k):
                itl.observe((now - previous) / k)

    def _per_token(self, method: str) -> tuple:
        children = self._children.get(method)
        if children is None:
            children = self._children[method] = (self.generation_tokens.labels(self.model),
                                                  self.ttft.labels(self.model, method),
                                                  self.itl.labels(self.model, method))
        return children

    def on_row_done(self, job, generation) -> None:
        """Speculative counters from one finished row (rows of a batch share their Stats: skipped)."""
        stats = generation.stats
        if stats.batch_size != 1 or not stats.drafted:
            return
        labels = (self.model, job.method)
        self.drafts.labels(*labels).inc(stats.drafted[0])
        self.draft_tokens.labels(*labels).inc(sum(stats.drafted))
        self.accepted.labels(*labels).inc(sum(stats.accepted))
        for pos, n in enumerate(stats.accepted):
            self.accepted_per_pos.labels(self.model, job.method, str(pos)).inc(n)

    def on_request_done(self, job, prompt_tokens: int, reasons: list[str], now: float) -> None:
        """A request answered (all rows finished) or aborted (reason "abort")."""
        self.prompt_tokens.labels(self.model).inc(prompt_tokens)
        for reason in reasons:
            self.success.labels(self.model, reason).inc()
        self.e2e.labels(self.model, job.method).observe(now - job.created)
        if job.started is not None:
            self.queue.labels(self.model, job.method).observe(job.started - job.created)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

"""Prometheus metrics of a service or an agent: cheap counting, collection when scraped.

The hot paths only add to plain numbers (an int in a dict, a ``Histogram``'s
bucket): no lock, no label lookup, nothing per message beyond that. The
official ``prometheus-client`` library turns them into metric families when
``/metrics`` is scraped, through the custom collector each component
registers in its own ``CollectorRegistry`` (never the library's global one,
so several services in one process, as in ``flowbus up`` or the tests, stay
apart). Gauges that need the database (run queues, late runs, agents online,
the outbox backlog) are computed at scrape time by bounded queries
(``ComponentMetrics.add_scrape``), each within ``metrics.scrape_timeout_seconds``.

Every family a component reports carries its ``service`` label (``agent``
for an agent); ``render`` merges the families of several components into one
exposition, with the process's own (memory, CPU) once. docs/operations.md
says what each metric means.

Reads and writes no NATS subject.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

# Seconds a command takes, from its arrival to its reply (the fast lane) or its handler's return.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Commands per group commit (a committer takes at most 256).
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
# How late the event loop wakes a sleeper: the time its callbacks held it.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# How often the loop-lag watcher sleeps and measures.
LAG_INTERVAL_SECONDS = 0.5


def _bound(value: float) -> str:
    """A bucket bound as prometheus-client writes it (``0.005``, ``1.0``)."""
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


class Histogram:
    """A histogram whose ``observe`` is one bisect and two additions (no lock: one event loop writes it)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound falls in that bound's bucket (Prometheus's ``le``).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative buckets as prometheus-client takes them, ``+Inf`` last."""
        out, running = [], 0
        for bound, n in zip((*(_bound(b) for b in self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, float(running)))
        return out


class CommandStats:
    """Per command subject: its latency histogram, and its refusals by error code."""

    def __init__(self) -> None:
        self.latency: dict[str, Histogram] = {}
        self.refusals: dict[tuple[str, str], int] = {}

    def observe(self, subject: str, seconds: float) -> None:
        histogram = self.latency.get(subject)
        if histogram is None:
            histogram = self.latency[subject] = Histogram(LATENCY_BUCKETS)
        histogram.observe(seconds)

    def refused(self, subject: str, code: str) -> None:
        key = (subject, code)
        self.refusals[key] = self.refusals.get(key, 0) + 1


def subject_label(subject: str) -> str:
    """A subject as a label value: a command's subject whole (it names no entity);
    any other cut to its first three tokens (``flowbus.hb.flow_run``), so ids never become labels."""
    if subject.startswith("flowbus.cmd."):
        return subject
    return ".".join(subject.split(".")[:3])


def label_set(labels: object) -> str:
    """A run's or agent's label set as one label value: sorted, comma-joined; ``(none)`` when empty."""
    values = sorted({str(v) for v in labels}) if isinstance(labels, list | tuple | set | frozenset) else []
    return ",".join(values) if values else "(none)"


class Families:
    """The metric families of one collection; every sample gets the component's ``service`` label."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._families: list[Metric] = []

    def _add(self, family: Metric) -> Metric:
        self._families.append(family)
        return family

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> _Family:
        return _Family(self.service, self._add(CounterMetricFamily(name, doc, labels=["service", *labels])))

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> _Family:
        return _Family(self.service, self._add(GaugeMetricFamily(name, doc, labels=["service", *labels])))

    def histogram(self, name: str, doc: str, labels: Sequence[str] = ()) -> _Histograms:
        family = HistogramMetricFamily(name, doc, labels=["service", *labels])
        return _Histograms(self.service, self._add(family))

    def all(self) -> list[Metric]:
        return self._families


class _Family:
    def __init__(self, service: str, family: Metric) -> None:
        self._service = service
        self._family = family

    def add(self, value: float, *labels: str) -> None:
        self._family.add_metric([self._service, *labels], value)  # type: ignore[attr-defined]


class _Histograms:
    def __init__(self, service: str, family: Metric) -> None:
        self._service = service
        self._family = family

    def add(self, histogram: Histogram, *labels: str) -> None:
        self._family.add_metric([self._service, *labels], histogram.buckets(), histogram.sum)  # type: ignore[attr-defined]


class Count:
    """A plain counter: ``count.value += n`` where it happens; reported as a counter family."""

    __slots__ = ("doc", "name", "value")

    def __init__(self, name: str, doc: str) -> None:
        self.name = name
        self.doc = doc
        self.value = 0


Collect = Callable[[Families], None]
Scrape = Callable[[Families], Awaitable[None]]


class ComponentMetrics:
    """The metrics of one service instance or agent, in its own registry.

    ``add(collect)``: a function that reads counters kept elsewhere (a stats
    object, a component's attributes) into families, at each collection.
    ``add_scrape(name, scrape)``: an async one (database gauges), run by
    ``refresh`` before each exposition, under a time limit; one that fails
    or overruns is counted in ``flowbus_metrics_scrape_errors_total`` and
    its families are left out of that scrape.
    """

    def __init__(self, service: str, scrape_timeout: float = 5.0) -> None:
        self.service = service
        self.scrape_timeout = scrape_timeout
        self.loop_lag = Histogram(LAG_BUCKETS)
        self.scrape_errors: dict[str, int] = {}
        self._collectors: list[Collect] = []
        self._scrapes: list[tuple[str, Scrape]] = []
        self._scraped: list[Metric] = []
        self._counts: dict[str, Count] = {}
        self._refreshing: asyncio.Lock | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def add(self, collect: Collect) -> None:
        self._collectors.append(collect)

    def add_scrape(self, name: str, scrape: Scrape) -> None:
        self._scrapes.append((name, scrape))

    def counter(self, name: str, doc: str) -> Count:
        """This component's counter ``name`` (the same one on every call: a restarted loop keeps counting)."""
        count = self._counts.get(name)
        if count is None:
            count = self._counts[name] = Count(name, doc)
        return count

    async def refresh(self) -> None:
        """Run the scrape-time gauges; concurrent scrapes share one run."""
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        if self._refreshing.locked():
            async with self._refreshing:
                return
        async with self._refreshing:
            families = Families(self.service)
            for name, scrape in self._scrapes:
                partial = Families(self.service)
                try:
                    await asyncio.wait_for(scrape(partial), self.scrape_timeout)
                except Exception as exc:
                    self.scrape_errors[name] = self.scrape_errors.get(name, 0) + 1
                    log.warning("%s: metrics from %s left out of this scrape: %r", self.service, name, exc)
                    continue
                families._families.extend(partial.all())
            self._scraped = families.all()

    def collect(self) -> Iterable[Metric]:
        """prometheus-client's collector protocol: what ``add`` reads now, and the last ``refresh``."""
        families = Families(self.service)
        for collect in self._collectors:
            collect(families)
        for count in self._counts.values():
            families.counter(count.name, count.doc).add(count.value)
        families.histogram(
            "flowbus_event_loop_lag_seconds",
            "How late the event loop woke a sleeper: the time its callbacks held it.",
        ).add(self.loop_lag)
        errors = families.counter(
            "flowbus_metrics_scrape_errors",
            "Scrape-time gauges (database queries) that failed or ran out of time.",
            ["source"],
        )
        for name, failures in sorted(self.scrape_errors.items()):
            errors.add(failures, name)
        return [*families.all(), *self._scraped]

    async def watch_loop_lag(self, interval: float = LAG_INTERVAL_SECONDS) -> None:
        """Measure the event loop's lag for ever (a background task)."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            self.loop_lag.observe(max(0.0, loop.time() - start - interval))


class _Fixed:
    """A collector that returns metrics collected already (one scrape's merge)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


def merge(collections: Iterable[Iterable[Metric]]) -> list[Metric]:
    """One family per name: the samples of same-named families (one per service) put together."""
    merged: dict[str, Metric] = {}
    for collection in collections:
        for metric in collection:
            known = merged.get(metric.name)
            if known is None:
                merged[metric.name] = metric
            elif known.type == metric.type:
                known.samples.extend(metric.samples)
            else:  # a bug: one name, two types; keep the first rather than emit an invalid exposition
                log.error("metric %s reported as %s and %s", metric.name, known.type, metric.type)
    return list(merged.values())


async def render(
    components: Sequence[ComponentMetrics], *, accept: str = "", names: Sequence[str] = ()
) -> tuple[bytes, str]:
    """The exposition of ``components`` and this process (memory, CPU, open files), in the
    format ``accept`` asks for (Prometheus text, or OpenMetrics); ``names`` keeps only
    those metrics (prometheus-client's ``name[]``). Returns the body and its content type."""
    for component in components:
        await component.refresh()
    metrics = merge([*(c.collect() for c in components), ProcessCollector(registry=None).collect()])
    if names:
        metrics = restrict(metrics, names)
    encoder, content_type = choose_encoder(accept)
    return encoder(_Fixed(metrics)), content_type


def restrict(metrics: Iterable[Metric], names: Sequence[str]) -> list[Metric]:
    """The families ``names`` names, by family name (``flowbus_runs_created``) or sample name (``..._total``)."""
    wanted = set(names)
    kept = []
    for metric in metrics:
        if metric.name in wanted:
            kept.append(metric)
            continue
        samples = [s for s in metric.samples if s.name in wanted]
        if samples:
            metric.samples = samples
            kept.append(metric)
    return kept

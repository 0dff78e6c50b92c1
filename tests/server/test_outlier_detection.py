"""Outlier detection's rules on the worker pool, on a fake clock: a run of failures,
ejections that grow and are bounded in time and share, never the last worker."""

from __future__ import annotations

from server.backends import Worker, WorkerPool
from server.outlier_detection import OutlierDetection

CARDS = [{"id": "m"}]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _pool(n: int, **settings) -> tuple[WorkerPool, Clock, list[str]]:
    clock = Clock()
    pool = WorkerPool(outliers=OutlierDetection(**settings), clock=clock)
    urls = [f"http://w{i}" for i in range(n)]
    for url in urls:
        pool.workers[url] = Worker(url, healthy=True, models=frozenset({"m"}),
                                   model_cards=tuple(CARDS))
    return pool, clock, urls


def _fail(pool: WorkerPool, url: str, times: int) -> None:
    for _ in range(times):
        pool.report_failure(url, "worker answered 500")


def _probe_generates(pool: WorkerPool, url: str) -> None:
    """What the monitor reports once a returning worker's probe made it generate."""
    if pool.ejection_over(url):
        pool.report_healthy(url, CARDS, generated=True)


def test_an_answer_between_failures_resets_the_run():
    pool, _, (a, b) = _pool(2, consecutive_failures=3)
    _fail(pool, a, 2)
    pool.report_answer(a)
    _fail(pool, a, 2)
    assert pool.healthy_ids() == {a, b}
    _fail(pool, a, 1)
    assert pool.healthy_ids() == {b}


def test_ejection_time_grows_with_each_ejection_and_is_capped():
    pool, clock, (a, _b) = _pool(2, consecutive_failures=1, base_ejection_s=30,
                                 max_ejection_s=75)
    for expected in (30, 60, 75, 75):
        _fail(pool, a, 1)
        assert a not in pool.healthy_ids()
        clock.now += expected - 1
        _probe_generates(pool, a)  # too early: a passing probe does not bring it back
        assert a not in pool.healthy_ids()
        clock.now += 1
        _probe_generates(pool, a)
        assert a in pool.healthy_ids()


def test_time_in_rotation_earns_back_shorter_ejections():
    pool, clock, (a, _b) = _pool(2, consecutive_failures=1, base_ejection_s=30,
                                 max_ejection_s=300)
    for _ in range(3):  # ejections of 30, 60, 90 s
        _fail(pool, a, 1)
        clock.now += 300
        _probe_generates(pool, a)
    clock.now += 2 * 30  # two base periods in rotation: the count falls from 3 to 1
    _fail(pool, a, 1)
    clock.now += 59  # the second ejection's length (60 s), not the fourth's (120 s)
    _probe_generates(pool, a)
    assert a not in pool.healthy_ids()
    clock.now += 1
    _probe_generates(pool, a)
    assert a in pool.healthy_ids()


def test_at_most_the_max_share_is_ejected_and_never_the_last_worker():
    pool, _, urls = _pool(5, consecutive_failures=1, max_ejected_share=0.5)
    for url in urls:
        _fail(pool, url, 3)
    assert len(pool.healthy_ids()) == 3  # floor(0.5 x 5) = 2 ejected
    pool, _, (a, b) = _pool(2, consecutive_failures=1, max_ejected_share=1.0)
    _fail(pool, a, 1)
    _fail(pool, b, 5)
    assert pool.healthy_ids() == {b}  # the last worker in rotation stays
    pool, _, (only,) = _pool(1, consecutive_failures=1, max_ejected_share=1.0)
    _fail(pool, only, 10)
    pool.report_failure(only, "no first event before the timeout", timed_out=True)
    assert pool.healthy_ids() == {only}


def test_a_refused_connection_takes_out_even_the_last_worker_until_it_generates():
    pool, _, (only,) = _pool(1)
    pool.report_failure(only, "cannot connect", unreachable=True)
    assert pool.healthy_ids() == set()
    pool.report_healthy(only, CARDS)  # /health alone is not enough
    assert pool.healthy_ids() == set()
    pool.report_healthy(only, CARDS, generated=True)
    assert pool.healthy_ids() == {only}


def test_health_probes_take_a_worker_out_after_a_run_of_failures():
    pool, _, (a,) = _pool(1)
    pool.unhealthy_after_failures = 3
    for _ in range(2):
        pool.report_probe_failure(a, "timed out")
    pool.report_healthy(a, CARDS)
    for _ in range(2):
        pool.report_probe_failure(a, "timed out")
    assert pool.healthy_ids() == {a}
    pool.report_probe_failure(a, "timed out")
    assert pool.healthy_ids() == set()

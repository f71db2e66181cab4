"""SessionRules: WebSocket-mode lanes, queueing and the connection-local cache (spec sections 1, 6)."""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from wsproxy.core.request import CreateRequest, parse_create
from wsproxy.core.session import SessionRules
from wsproxy.store.base import StoredResponse

_tags = itertools.count()


def req(stream_id: str | None = None, prev: str | None = None, **extra: Any) -> CreateRequest:
    obj: dict[str, Any] = {"type": "response.create", "model": "m", "metadata": {"n": str(next(_tags))}}
    if stream_id is not None:
        obj["stream_id"] = stream_id
    if prev is not None:
        obj["previous_response_id"] = prev
    return parse_create({**obj, **extra}, websocket=True)


def record(response_id: str) -> StoredResponse:
    return StoredResponse(
        id=response_id, response={"id": response_id, "status": "completed", "output": []}, input_items=[]
    )


def submit_all(rules: SessionRules, *requests: CreateRequest) -> None:
    for r in requests:
        assert rules.submit(r) is None


def started(rules: SessionRules) -> list[CreateRequest]:
    return [r for _, r in rules.next_ready()]


def test_fifo_on_the_default_lane() -> None:
    rules = SessionRules()
    a, b, c = req(), req(), req()
    submit_all(rules, a, b, c)
    assert rules.next_ready() == [(None, a)]
    assert rules.next_ready() == []  # one at a time per lane
    rules.finished(None, a, record("resp_a"), True)
    assert started(rules) == [b]
    rules.finished(None, b, None, False)
    assert started(rules) == [c]
    rules.finished(None, c, record("resp_c"), True)
    assert rules.next_ready() == [] and rules.idle


def test_lanes_run_concurrently_and_fifo_within_each() -> None:
    rules = SessionRules()
    d1, x1, x2, y1, d2 = req(), req("x"), req("x"), req("y"), req()
    submit_all(rules, d1, x1, x2, y1, d2)
    assert sorted(rules.next_ready(), key=lambda t: str(t[0])) == [(None, d1), ("x", x1), ("y", y1)]
    assert rules.inflight == 3 and rules.queued == 2
    rules.finished("x", x1, record("resp_x1"), True)
    assert rules.next_ready() == [("x", x2)]
    rules.finished(None, d1, record("resp_d1"), True)
    assert rules.next_ready() == [(None, d2)]


def test_sixteen_in_flight_more_are_queued_and_start_when_a_slot_frees() -> None:
    rules = SessionRules()  # spec defaults: 16 in flight, 32 named lanes
    requests = [req(f"lane{i}") for i in range(20)]
    submit_all(rules, *requests)
    first = rules.next_ready()
    assert len(first) == 16 and rules.inflight == 16 and rules.queued == 4
    assert rules.next_ready() == []
    lane, done = first[5]
    rules.finished(lane, done, record("resp_5"), True)
    assert rules.next_ready() == [("lane16", requests[16])]  # waiting lanes start in arrival order
    assert rules.inflight == 16 and rules.queued == 3


def test_max_inflight_counts_across_lanes_including_default() -> None:
    rules = SessionRules(max_inflight=2)
    a, b, c = req(), req("x"), req("y")
    submit_all(rules, a, b, c)
    assert started(rules) == [a, b]
    rules.finished(None, a, None, False)
    assert started(rules) == [c]


def test_thirty_third_named_lane_is_refused() -> None:
    rules = SessionRules()
    submit_all(rules, *(req(f"s{i}") for i in range(32)))
    err = rules.submit(req("s32"))
    assert err is not None
    assert (err.code, err.param, err.status) == ("websocket_stream_limit_reached", "stream_id", 400)
    # Existing lanes and the default lane still accept work.
    assert rules.submit(req("s0")) is None
    assert rules.submit(req()) is None
    assert rules.queued == 34


def test_max_queued_bound() -> None:
    rules = SessionRules(max_queued=2, max_inflight=1)
    submit_all(rules, req(), req())
    err = rules.submit(req())
    assert err is not None and err.status == 400
    assert rules.queued == 2
    assert len(rules.next_ready()) == 1
    assert rules.submit(req()) is None  # room again once one started


def test_a_refused_request_leaves_no_lane_behind() -> None:
    """A create refused because the queue is full must not use up one of the 32 named lanes."""
    rules = SessionRules(max_queued=1, max_lanes=1)
    first = req()
    submit_all(rules, first)
    refused = rules.submit(req("x"))
    assert refused is not None and refused.code != "websocket_stream_limit_reached"
    rules.next_ready()  # the queue has room again
    assert rules.submit(req("y")) is None  # "x" was never accepted, so "y" is the first named lane


def test_cache_holds_the_latest_completed_response_per_lane() -> None:
    rules = SessionRules()
    a, b = req(), req()
    submit_all(rules, a, b)
    rules.next_ready()
    rules.finished(None, a, record("resp_a"), True)
    cached = rules.lookup("resp_a", None)
    assert cached is not None and cached.id == "resp_a"
    rules.next_ready()
    rules.finished(None, b, record("resp_b"), True)
    assert rules.lookup("resp_a", None) is None  # only the latest per lane
    found = rules.lookup("resp_b", None)
    assert found is not None and found.id == "resp_b"


def test_a_failed_response_is_not_cached() -> None:
    rules = SessionRules()
    a, b = req(), req()
    submit_all(rules, a, b)
    rules.next_ready()
    rules.finished(None, a, record("resp_a"), True)
    rules.next_ready()
    rules.finished(None, b, record("resp_b"), False)
    assert rules.lookup("resp_b", None) is None
    assert rules.lookup("resp_a", None) is not None  # b did not continue from a: a stays


def test_lanes_have_separate_caches_and_lookup_reaches_other_lanes() -> None:
    rules = SessionRules()
    a, x = req(), req("x")
    submit_all(rules, a, x)
    rules.next_ready()
    rules.finished(None, a, record("resp_a"), True)
    rules.finished("x", x, record("resp_x"), True)
    # Each lane keeps its own latest: finishing x did not replace a.
    own = rules.lookup("resp_a", None)
    assert own is not None and own.id == "resp_a"
    fork = rules.lookup("resp_a", "new-lane")  # a fork: another (even unknown) lane
    assert fork is not None and fork.id == "resp_a"
    assert rules.lookup("resp_x", None) is not None
    assert rules.lookup("resp_nope", None) is None


def test_failed_same_lane_continuation_evicts_its_parent() -> None:
    rules = SessionRules()
    a = req("x")
    submit_all(rules, a)
    rules.next_ready()
    rules.finished("x", a, record("resp_a"), True)
    cont = req("x", prev="resp_a")
    submit_all(rules, cont)
    rules.next_ready()
    rules.finished("x", cont, None, False)
    assert rules.lookup("resp_a", "x") is None
    assert rules.lookup("resp_a", None) is None


def test_failed_fork_keeps_the_shared_parent() -> None:
    rules = SessionRules()
    a = req("src")
    submit_all(rules, a)
    rules.next_ready()
    rules.finished("src", a, record("resp_a"), True)
    fork = req("fork", prev="resp_a")
    submit_all(rules, fork)
    rules.next_ready()
    rules.finished("fork", fork, None, False)
    kept = rules.lookup("resp_a", "src")
    assert kept is not None and kept.id == "resp_a"


def test_successful_fork_caches_on_its_own_lane() -> None:
    rules = SessionRules()
    a = req("src")
    submit_all(rules, a)
    rules.next_ready()
    rules.finished("src", a, record("resp_a"), True)
    fork = req("fork", prev="resp_a")
    submit_all(rules, fork)
    rules.next_ready()
    rules.finished("fork", fork, record("resp_f"), True)
    assert rules.lookup("resp_a", "src") is not None
    assert rules.lookup("resp_f", "fork") is not None


def test_idle() -> None:
    rules = SessionRules()
    assert rules.idle
    a = req()
    submit_all(rules, a)
    assert not rules.idle  # queued
    rules.next_ready()
    assert not rules.idle  # running
    rules.finished(None, a, None, False)
    assert rules.idle


# -- state machine --------------------------------------------------------------------------------

MAX_INFLIGHT = 3
MAX_LANES = 3
LANES: list[str | None] = [None, "a", "b", "c", "d"]


class SessionMachine(RuleBasedStateMachine):
    """A model of the rules: per-lane FIFO queues, one running per lane, a global cap, the cache."""

    @initialize()
    def setup(self) -> None:
        self.session = SessionRules(max_inflight=MAX_INFLIGHT, max_lanes=MAX_LANES, max_queued=10_000)
        self.n = 0
        self.named: set[str] = set()
        self.waiting: dict[str | None, deque[CreateRequest]] = {lane: deque() for lane in LANES}
        self.running: dict[str | None, CreateRequest] = {}
        self.latest: dict[str | None, str | None] = dict.fromkeys(LANES)
        self.known: list[str] = []

    @rule(
        lane=st.sampled_from(LANES),
        prev=st.sampled_from(["none", "same-lane", "other"]),
        which=st.integers(0, 50),
    )
    def submit(self, lane: str | None, prev: str, which: int) -> None:
        prev_id: str | None = None
        if prev == "same-lane":
            prev_id = self.latest[lane]  # continue this lane's chain
        elif prev == "other" and self.known:
            prev_id = self.known[which % len(self.known)]  # a fork, or a stale id
        request = req(lane, prev_id)
        err = self.session.submit(request)
        if lane is not None and lane not in self.named and len(self.named) >= MAX_LANES:
            assert err is not None and err.code == "websocket_stream_limit_reached"
            return
        assert err is None
        if lane is not None:
            self.named.add(lane)
        self.waiting[lane].append(request)

    @rule()
    def start(self) -> None:
        for lane, request in self.session.next_ready():
            assert lane not in self.running, "two responses running on one lane"
            expected = self.waiting[lane].popleft()
            assert request is expected, "lane order is not FIFO"
            self.running[lane] = request
        # Work-conserving: a lane with work waits only when every slot is taken.
        if len(self.running) < MAX_INFLIGHT:
            for lane, queue in self.waiting.items():
                assert not queue or lane in self.running, f"lane {lane!r} starves"

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data(), ok=st.booleans(), with_record=st.booleans())
    def finish(self, data: st.DataObject, ok: bool, with_record: bool) -> None:
        lane = data.draw(st.sampled_from(sorted(self.running, key=str)))
        request = self.running.pop(lane)
        self.n += 1
        rec = record(f"resp_{self.n}") if ok or with_record else None
        self.session.finished(lane, request, rec, ok)
        if ok:
            assert rec is not None
            self.latest[lane] = rec.id
            self.known.append(rec.id)
        elif request.previous_response_id is not None and self.latest[lane] == request.previous_response_id:
            self.latest[lane] = None  # a failed same-lane continuation evicts its parent

    @rule(lane=st.sampled_from(LANES), which=st.integers(0, 50))
    def lookup(self, lane: str | None, which: int) -> None:
        if not self.known:
            return
        response_id = self.known[which % len(self.known)]
        found = self.session.lookup(response_id, lane)
        cached = response_id in self.latest.values()
        assert (found is not None) == cached
        assert found is None or found.id == response_id

    @invariant()
    def counters(self) -> None:
        rules = self.session
        assert rules.inflight == len(self.running) <= MAX_INFLIGHT
        assert rules.queued == sum(len(q) for q in self.waiting.values())
        assert rules.idle == (not self.running and rules.queued == 0)
        for lane, state in rules.lanes.items():
            assert state.running == (lane in self.running)
            assert list(state.queue) == list(self.waiting[lane])
        assert len(rules.lanes) - 1 <= MAX_LANES


SessionMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
test_session_rules_state_machine = SessionMachine.TestCase


@pytest.mark.parametrize("lanes", [1, 32])
def test_named_lane_limit_is_configurable(lanes: int) -> None:
    rules = SessionRules(max_lanes=lanes)
    submit_all(rules, *(req(f"s{i}") for i in range(lanes)))
    err = rules.submit(req("one-more"))
    assert err is not None and err.code == "websocket_stream_limit_reached"

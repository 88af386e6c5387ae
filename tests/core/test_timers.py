"""The lazy deadline heap: always the true earliest deadline, found without a
walk over every timer, and never much larger than the timers alive."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridgeproto._timers import _SLACK, Key, LazyDeadlines


class Deadlines:
    """The truth the heap is held against: each timer's deadline, or none."""

    def __init__(self) -> None:
        self.when: dict[Key, float] = {}
        self.looked_up = 0
        self.heap = LazyDeadlines(self.deadline_of)

    def deadline_of(self, key: Key) -> float | None:
        self.looked_up += 1
        return self.when.get(key)

    def start(self, key: Key, when: float) -> None:
        self.when[key] = when
        self.heap.arm(key, when)


# Operations on timer n: start it, move it later (nothing to tell the heap),
# move it earlier (arm again), drop it, or pop what is due at a time.
operations = st.lists(
    st.tuples(
        st.sampled_from(["start", "later", "earlier", "drop", "pop"]),
        st.integers(0, 15),
        st.integers(0, 1000),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_the_earliest_is_always_the_true_earliest_and_pop_takes_exactly_the_due(
    ops: list[tuple[str, int, int]],
) -> None:
    model = Deadlines()
    for op, n, t in ops:
        key = (n, 0)
        if op == "start" and key not in model.when:
            model.start(key, float(t))
        elif op == "later" and key in model.when:
            model.when[key] += t
        elif op == "earlier" and key in model.when:
            model.start(key, model.when[key] - t)
        elif op == "drop":
            model.when.pop(key, None)
        elif op == "pop":
            due = {k for k, when in model.when.items() if when <= t}
            popped = model.heap.pop_due(float(t))
            assert len(popped) == len(set(popped)) and set(popped) == due
            for k in due:  # a popped timer is disarmed: the owner ends it
                del model.when[k]
        assert model.heap.earliest() == min(model.when.values(), default=None)


def test_the_earliest_of_a_thousand_unmoved_timers_looks_at_one() -> None:
    model = Deadlines()
    for n in range(1000):
        model.start((n, 0), 100.0 + n)
    model.looked_up = 0
    assert model.heap.earliest() == 100.0
    assert model.looked_up == 1


def test_timers_that_moved_later_are_each_corrected_once() -> None:
    model = Deadlines()
    for n in range(1000):
        model.start((n, 0), 100.0 + n)
    for key in model.when:
        model.when[key] += 5000.0  # every timer restarted by activity
    model.looked_up = 0
    assert model.heap.earliest() == 5100.0
    first = model.looked_up
    assert first <= 1001  # each moved entry once, then the new top
    model.looked_up = 0
    assert model.heap.earliest() == 5100.0
    assert model.looked_up == 1


def test_dropped_timers_do_not_pile_up() -> None:
    model = Deadlines()
    for n in range(10_000):  # exchanges opening and ending, three alive at a time
        model.start((n, 0), 1e6 + n)
        model.when.pop((n - 3, 0), None)
        # At most four alive when one is armed (before the oldest is dropped);
        # the heap is rebuilt past twice those plus the slack.
        assert len(model.heap) <= 2 * 4 + _SLACK
    assert model.heap.earliest() == 1e6 + 9_997


def test_arming_many_live_timers_costs_look_ups_in_proportion() -> None:
    model = Deadlines()
    for n in range(1000):
        model.start((n, 0), float(n))
    # Each clean-up leaves the heap at least half live, so all of them
    # together look at fewer than twice the timers armed, plus the slack.
    assert model.looked_up <= 2 * 1000 + _SLACK

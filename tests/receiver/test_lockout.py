"""Counting wrong admin tokens per address (receiver/lockout.py)."""

from __future__ import annotations

from receiver.lockout import Lockout


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_waits_once_it_has_too_many_wrong_tokens_in_the_window():
    clock = Clock()
    lockout = Lockout(limit=3, window_s=60, clock=clock)
    for _ in range(2):
        lockout.wrong("10.0.0.1")
        clock.now += 10
    assert lockout.wait_s("10.0.0.1") == 0
    lockout.wrong("10.0.0.1")  # the third, 20 s after the first
    assert lockout.wait_s("10.0.0.1") == 40
    assert lockout.wait_s("10.0.0.2") == 0  # others are not affected
    clock.now += 40  # the first wrong token leaves the window
    assert lockout.wait_s("10.0.0.1") == 0


def test_old_wrong_tokens_do_not_add_up_with_new_ones():
    clock = Clock()
    lockout = Lockout(limit=3, window_s=60, clock=clock)
    for _ in range(10):
        lockout.wrong("10.0.0.1")
        clock.now += 31  # never three within a minute
        assert lockout.wait_s("10.0.0.1") == 0


def test_the_right_token_forgets_the_wrong_ones():
    lockout = Lockout(limit=3, window_s=60, clock=Clock())
    lockout.wrong("10.0.0.1")
    lockout.wrong("10.0.0.1")
    lockout.right("10.0.0.1")
    lockout.wrong("10.0.0.1")
    lockout.wrong("10.0.0.1")
    assert lockout.wait_s("10.0.0.1") == 0


def test_it_remembers_a_bounded_number_of_addresses_the_longest_quiet_first_forgotten():
    lockout = Lockout(limit=2, window_s=60, max_addresses=2, clock=Clock())
    lockout.wrong("a")
    lockout.wrong("b")
    lockout.wrong("a")  # `a` is now the most recent
    lockout.wrong("c")  # `b` is forgotten, not `a`
    assert lockout.wait_s("a") == 60
    lockout.wrong("b")
    assert lockout.wait_s("b") == 0  # one wrong token counted, not two

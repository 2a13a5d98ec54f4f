from infra.cli.runner import busy_seconds


def test_busy_seconds_counts_overlapping_tasks_once():
    t = "2026-01-01T00:00:{:02d}+00:00".format
    intervals = [(t(0), t(10)), (t(12), t(20)), (t(15), t(25)), (t(30), t(31)), (None, t(40)), (t(41), None)]
    assert busy_seconds(intervals) == 10 + 13 + 1


def test_busy_seconds_of_nothing_is_zero():
    assert busy_seconds([]) == 0.0

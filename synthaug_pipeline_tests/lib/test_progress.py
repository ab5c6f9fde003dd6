"""Progress lines: time left from the pace so far, and never silent for long."""

from synthaug_pipeline.lib.progress import REPORT_SECONDS, Eta, duration


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_duration_reads_like_a_person_writes_it():
    assert [duration(s) for s in (0, 59.4, 75, 3600, 4000)] == ["0s", "59s", "1m15s", "1h00m", "1h06m"]


def test_time_left_follows_the_mean_pace():
    clock = FakeClock()
    eta = Eta(100, clock=clock, wall=lambda: 0.0)
    assert eta.text(0) == "timing"
    clock.now += 10  # 10 units in 10 s: 90 left at 1/s
    assert eta.text(10).startswith("1m30s left, done at ")
    clock.now += 90
    assert eta.text(100) == "took 1m40s"


def test_time_left_counts_from_the_first_report():
    clock = FakeClock()
    eta = Eta(100, first_done=20, clock=clock, wall=lambda: 0.0)
    assert eta.text(20) == "timing"
    clock.now += 20  # 20 units in 20 s after the first report: 60 left
    assert eta.text(40).startswith("1m00s left")


def test_reports_the_first_unit_every_nth_and_after_a_quiet_spell():
    clock = FakeClock()
    eta = Eta(1000, clock=clock)
    due = [step for step in range(1, 1001) if eta.due(step, every=100)]
    assert due == [1, *range(100, 1001, 100)]
    clock.now += REPORT_SECONDS
    assert eta.due(101, every=100)  # slow steps: a line after 30 s even between the tenths
    assert not eta.due(102, every=100)

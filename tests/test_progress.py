"""Progress bar: silent off a terminal, draws on one, thread-safe counting."""
from __future__ import annotations

import io
import threading

import pytest

from persona.progress import Progress, format_count, format_duration


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_silent_when_not_a_tty() -> None:
    stream = io.StringIO()
    with Progress(total=10, desc="import", stream=stream) as bar:
        bar.update(4)
        bar.update(6)
    assert bar.count == 10
    assert stream.getvalue() == ""


def test_silent_on_closed_or_odd_streams() -> None:
    class NoIsatty:
        def write(self, s: str) -> int:
            raise AssertionError("must not write")

        def flush(self) -> None:
            raise AssertionError("must not flush")

    with Progress(total=2, stream=NoIsatty()) as bar:  # type: ignore[arg-type]
        bar.update(2)
    assert bar.count == 2


def test_renders_on_tty_with_total() -> None:
    stream, clock = FakeTTY(), Clock()
    bar = Progress(total=10_000, desc="align", unit="reads", stream=stream, clock=clock, width=100, min_interval=0)
    clock.now += 2.0
    bar.update(5_000)
    out = stream.getvalue()
    assert out.startswith("\r") and "\n" not in out
    line = out[1:]
    assert line.startswith("align:  50% |")
    assert "5k/10k reads" in line
    assert "[00:02<00:02, 2.5k reads/s]" in line
    bar_part = line.split("|")[1]
    assert bar_part.count("█") == len(bar_part) // 2
    assert len(line) <= 100
    clock.now += 2.0
    bar.update(5_000)
    bar.close()
    final = stream.getvalue().split("\r")[-1]
    assert final.startswith("align: 100% |") and final.endswith("[00:04<00:00, 2.5k reads/s]\n")
    bar.close()  # idempotent: nothing more written
    assert stream.getvalue().endswith("reads/s]\n")


def test_unknown_total() -> None:
    stream, clock = FakeTTY(), Clock()
    with Progress(desc="export", unit="records", stream=stream, clock=clock, min_interval=0) as bar:
        clock.now += 65.0
        bar.update(1_300_000)
    last = stream.getvalue().split("\r")[-1]
    assert last == "export: 1.3M records [01:05, 20k records/s]\n"


def test_throttled_redraws() -> None:
    stream, clock = FakeTTY(), Clock()
    bar = Progress(total=100, stream=stream, clock=clock, min_interval=1.0, width=60)
    for _ in range(50):
        bar.update(1)  # same instant: only the first draws
    assert stream.getvalue().count("\r") == 1
    clock.now += 1.0
    bar.update(1)
    assert stream.getvalue().count("\r") == 2
    assert "51/100" in stream.getvalue().split("\r")[-1]


def test_shorter_line_pads_previous() -> None:
    stream, clock = FakeTTY(), Clock()
    bar = Progress(desc="a long description", stream=stream, clock=clock, min_interval=0, unit="x")
    clock.now += 1
    bar.update(123_456)
    first = stream.getvalue().split("\r")[-1]
    bar.desc = ""
    bar.update(0)
    second = stream.getvalue().split("\r")[-1]
    assert second.startswith("123k x [") and len(second) == len(first)
    assert second.endswith(" " * len("a long description: "))


def test_narrow_terminal_drops_bar() -> None:
    stream = FakeTTY()
    bar = Progress(total=10, desc="d", stream=stream, width=30, min_interval=0)
    bar.update(5)
    assert "|" not in stream.getvalue() and "50%" in stream.getvalue()


def test_enabled_override() -> None:
    stream = FakeTTY()
    with Progress(total=1, stream=stream, enabled=False) as bar:
        bar.update()
    assert stream.getvalue() == ""
    plain = io.StringIO()
    with Progress(total=1, stream=plain, enabled=True, min_interval=0) as bar:
        bar.update()
    assert "100%" in plain.getvalue()


def test_thread_safe_counting() -> None:
    stream = FakeTTY()
    bar = Progress(total=80_000, stream=stream, min_interval=0.001)

    def work() -> None:
        for _ in range(10_000):
            bar.update(1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    assert bar.count == 80_000
    assert stream.getvalue().split("\r")[-1].startswith("100%")


def test_negative_total() -> None:
    with pytest.raises(ValueError):
        Progress(total=-1)


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0"), (950, "950"), (1000, "1k"), (12_345, "12.3k"), (4_560_000, "4.56M"), (2.5, "2.5"), (7e9, "7G")],
)
def test_format_count(n: float, text: str) -> None:
    assert format_count(n) == text


@pytest.mark.parametrize(
    ("s", "text"), [(0, "00:00"), (59.9, "00:59"), (61, "01:01"), (3725, "1:02:05"), (-3, "00:00")]
)
def test_format_duration(s: float, text: str) -> None:
    assert format_duration(s) == text

"""Progress of long jobs: plain lines off a terminal (a log gets no carriage-return redraws), a
bar on one."""

import io

from viewpoint_jax.common.progress import BYTES, Progress, format_amount


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(stream: io.StringIO) -> list[str]:
    text = stream.getvalue()
    assert "\r" not in text
    return text.splitlines()


def test_a_line_every_tenth_of_the_total_off_a_terminal():
    log = io.StringIO()
    with Progress(20, "encoding", unit="file", stream=log) as progress:
        for _ in range(20):
            progress.update(1, "clip.mp4: 2 records")
    written = lines(log)
    assert [line.split()[2] for line in written] == [f"{n}/20" for n in range(2, 21, 2)]
    assert written[0].startswith("encoding: file 2/20 (") and written[0].endswith(
        " s); clip.mp4: 2 records"
    )


def test_bytes_lines_fall_on_multiples_of_every_and_the_end():
    log = io.StringIO()
    with Progress(2.5e9, "converting dit", unit=BYTES, every=1e9, announce=True, stream=log) as p:
        for _ in range(5):
            p.update(0.5e9)
    written = lines(log)
    assert [line.split(" (")[0] for line in written] == [
        "converting dit: 0 B/2.50 GB",
        "converting dit: 1.00 GB/2.50 GB",
        "converting dit: 2.00 GB/2.50 GB",
        "converting dit: 2.50 GB/2.50 GB",
    ]


def test_resumed_progress_counts_from_its_start_on_the_same_grid():
    log = io.StringIO()
    progress = Progress(8, "train", unit="step", every=2, initial=3, stream=log)
    for _ in range(5):
        progress.update(1, "loss 0.5")
    assert [line.split()[2] for line in lines(log)] == ["4/8", "6/8", "8/8"]


def test_unknown_total_and_messages():
    log = io.StringIO()
    progress = Progress(None, "sampling", unit="step", every=3, stream=log)
    progress.write("window 1")
    for _ in range(7):
        progress.update()
    assert [line.split(" (")[0] for line in lines(log)] == [
        "window 1",
        "sampling: step 3",
        "sampling: step 6",
    ]


def test_disabled_prints_nothing():
    log = io.StringIO()
    with Progress(4, "x", stream=log, enabled=False, announce=True) as progress:
        progress.update(4)
        progress.write("hidden")
    assert log.getvalue() == ""


def test_a_terminal_gets_a_bar():
    terminal = Terminal()
    with Progress(4, "encoding", unit="file", stream=terminal) as progress:
        for _ in range(4):
            progress.update(1)
    assert "\r" in terminal.getvalue() and "4/4" in terminal.getvalue()


def test_amounts():
    assert format_amount(1234, "file") == "1,234"
    assert format_amount(999, BYTES) == "999 B"
    assert format_amount(28e9, BYTES) == "28.00 GB"
    assert format_amount(1.5e6, BYTES) == "1.50 MB"

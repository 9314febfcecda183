"""`make bench`: run the benchmark sections, keep every finished section's figures, plot them.

Stdout is one JSON document (every section's figures); progress goes to stderr. Results survive
a run that is stopped - Ctrl-C, SIGTERM, or a kill - because nothing waits for the end:

* ``<out-dir>/<section>.json`` is written the moment that section finishes (its figures, or its
  error: a failing section is recorded and the run goes on to the next);
* ``<out-dir>/latest.json``, the combined document, is rewritten after every section, with the
  run's status (``running``, ``complete`` or ``interrupted``);
* ``<out-dir>/latest.png``, the headline figures, is drawn at the end (also after Ctrl-C or
  SIGTERM) and by ``--plot-only``.

Every file is written to a temporary name and renamed, so a kill at any moment leaves the
previous complete file, never half of one.

Options: ``--quick`` (fewer samples, smaller networks: the whole suite in a few minutes),
``--only a,b`` (a subset, in the table's order), ``--list`` (the sections and their expected
durations), ``--out-dir`` (default ``var/bench``), ``--sections-module`` (another table of
sections; the runner's own test uses it). Exit status: 0 when every section ran, 1 when one
failed, 2 for a usage error, 128 + signal number when stopped.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, NoReturn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("BCL_DATA_DIR", str(ROOT / ".bitcoinlib"))

# A long section says it is still running this often (the runner's test shortens it).
HEARTBEAT_SECONDS = float(os.environ.get("FP_BENCH_HEARTBEAT_SECONDS", "60"))


class Stopped(BaseException):
    """SIGTERM, raised in the main thread so that the running section's ``finally`` blocks stop
    its daemons and remove its temporary files, exactly as Ctrl-C's KeyboardInterrupt does.
    A BaseException, like KeyboardInterrupt, so a section's ``except Exception`` cannot
    swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_sigterm(signum: int, _frame: FrameType | None) -> NoReturn:
    raise Stopped(signum)


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    """Write-then-rename: whoever reads ``path`` - or a run killed during the write - sees
    either the old complete file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(document, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_sections_module(spec: str) -> ModuleType:
    """A module name on the path (``sections``) or a ``.py`` file anywhere."""
    if spec.endswith(".py") or os.sep in spec:
        path = Path(spec).resolve()
        module_spec = importlib.util.spec_from_file_location(f"bench_sections_{path.stem}", path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(f"cannot load a sections module from {path}")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module
    return importlib.import_module(spec)


def _error_line(exc: BaseException) -> tuple[str, str | None]:
    """One line for the record and stderr, and where it was raised (file:line of the innermost
    frame) - enough to find the cause without a traceback in the results."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(text) > 500:
        text = text[:497] + "..."
    frames = traceback.extract_tb(exc.__traceback__)
    where = None
    if frames:
        last = frames[-1]
        try:
            shown = str(Path(last.filename).resolve().relative_to(ROOT))
        except ValueError:
            shown = Path(last.filename).name
        where = f"{shown}:{last.lineno}"
    return text, where


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def _previous_seconds(path: Path, quick: bool) -> float | None:
    """How long this section's last successful run in the same mode took, from its file."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and record.get("quick") == quick and "error" not in record:
        seconds = record.get("seconds")
        if isinstance(seconds, int | float):
            return float(seconds)
    return None


class Heartbeat:
    """Says every ``HEARTBEAT_SECONDS`` that the current section is still running, and for how
    long against its expectation - a quiet section is otherwise indistinguishable from a hung one."""

    def __init__(self, label: str, expected_s: float, interval: float = HEARTBEAT_SECONDS) -> None:
        self._label, self._expected, self._interval = label, expected_s, interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="bench-heartbeat", daemon=True)
        self._start = time.perf_counter()

    def _beat(self) -> None:
        while not self._done.wait(self._interval):
            elapsed = time.perf_counter() - self._start
            say(f"{self._label} still running: {_fmt_s(elapsed)} so far (expected ~{_fmt_s(self._expected)})")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()


def _headline_summary(name: str, figures: Mapping[str, Any], headlines: Sequence[Any]) -> str:
    parts = []
    for h in headlines:
        if h.section == name and (value := h.value(figures)) is not None:
            parts.append(f"{h.label} {value:.4g} {h.unit}")
    return "; ".join(parts)


def run_sections(args: argparse.Namespace, sections: Sequence[Any], headlines: Sequence[Any]) -> int:
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    combined_path = out_dir / "latest.json"
    mode = "quick" if args.quick else "full"
    combined: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "started_at": now_iso(),
        "quick": args.quick,
        "status": "running",
        "sections_planned": [s.name for s in sections],
        "durations_s": {},
        "expected_s": {s.name: s.expected_s(args.quick) for s in sections},
    }
    write_json(combined_path, combined)
    total_expected = sum(s.expected_s(args.quick) for s in sections)
    say(f"{len(sections)} sections in {mode} mode, expected ~{_fmt_s(total_expected)} in all "
        f"(~{total_expected / 60:.1f} min); results in {out_dir}/")
    run_start = time.perf_counter()
    failed: list[str] = []
    exit_code = 0
    current: tuple[str, str, float] | None = None  # (name, label, start) while a section runs
    try:
        for index, section in enumerate(sections, start=1):
            label = f"[{index}/{len(sections)}] {section.name}"
            section_path = out_dir / f"{section.name}.json"
            expected = section.expected_s(args.quick)
            previous = _previous_seconds(section_path, args.quick)
            say(f"{label}: starting, expected ~{_fmt_s(expected)} in {mode} mode"
                + (f" (its last {mode} run here took {_fmt_s(previous)})" if previous is not None else ""))
            record: dict[str, Any] = {"section": section.name, "quick": args.quick, "started_at": now_iso(),
                                      "expected_s": expected}
            start = time.perf_counter()
            current = (section.name, label, start)
            try:
                with Heartbeat(label, expected):
                    figures = section.load()(quick=args.quick)
                if not isinstance(figures, Mapping):
                    raise TypeError(f"section returned {type(figures).__name__}, not a mapping of figures")
                record["figures"] = dict(figures)
            except Exception as exc:  # one broken section must not lose the others' figures
                record["error"], record["error_at"] = _error_line(exc)
            elapsed = time.perf_counter() - start
            record["finished_at"] = now_iso()
            record["seconds"] = round(elapsed, 3)
            write_json(section_path, record)
            combined[section.name] = record["figures"] if "figures" in record else {
                "error": record["error"], "error_at": record["error_at"]}
            combined["durations_s"][section.name] = record["seconds"]
            current = None  # recorded: a stop from here on loses nothing of this section
            write_json(combined_path, combined)
            if "error" in record:
                failed.append(section.name)
                say(f"{label}: FAILED after {_fmt_s(elapsed)}: {record['error']}"
                    + (f" (at {record['error_at']})" if record["error_at"] else "") + f" → {section_path}")
            else:
                summary = _headline_summary(section.name, record["figures"], headlines)
                say(f"{label}: done in {_fmt_s(elapsed)} (expected ~{_fmt_s(expected)}) → {section_path}"
                    + (f"\n        {summary}" if summary else ""))
        combined["status"] = "complete"
    except (KeyboardInterrupt, Stopped) as stop:
        what = str(stop) if isinstance(stop, Stopped) else "SIGINT"
        if current is not None:
            name, label, start = current
            elapsed = time.perf_counter() - start
            say(f"{label}: interrupted by {what} after {_fmt_s(elapsed)}; the sections that finished are kept")
            combined[name] = {"error": f"interrupted by {what} after {elapsed:.1f} s"}
            combined["durations_s"][name] = round(elapsed, 1)
        else:
            say(f"interrupted by {what} between sections; the sections that finished are kept")
        combined["status"] = "interrupted"
        exit_code = 128 + (stop.signum if isinstance(stop, Stopped) else int(signal.SIGINT))
    combined["finished_at"] = now_iso()
    total = time.perf_counter() - run_start
    combined["total_s"] = round(total, 1)
    write_json(combined_path, combined)
    # plot even after a stop: what finished is worth a picture; a second Ctrl-C skips it
    try:
        plotted = draw(out_dir, args.all_sections, headlines)
        say(f"plot of {len(plotted)} headline figures → {out_dir / 'latest.png'}")
    except (KeyboardInterrupt, Stopped):
        say("plot skipped: stopped again")
    except Exception as exc:  # the JSON is what matters; a broken plot must not hide it
        text, where = _error_line(exc)
        say(f"plot FAILED: {text}" + (f" (at {where})" if where else ""))
        exit_code = exit_code or 1
    succeeded = sum(1 for s in sections
                    if isinstance(combined.get(s.name), Mapping) and "error" not in combined[s.name])
    say(f"{combined['status']} after {_fmt_s(total)} ({total / 60:.1f} min): {succeeded} of "
        f"{len(sections)} sections succeeded" + (f", failed: {', '.join(failed)}" if failed else "")
        + f"; results in {combined_path}")
    json.dump(combined, sys.stdout, indent=2, default=str)
    print(flush=True)
    if exit_code:
        return exit_code
    return 1 if failed else 0


def draw(out_dir: Path, sections: Sequence[Any], headlines: Sequence[Any]) -> list[str]:
    from plot import write_plot  # matplotlib only when a plot is drawn

    return write_plot(out_dir, sections, headlines, out_dir / "latest.png")


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", metavar="SECTION[,SECTION]", help="run these sections only (in the table's order)")
    parser.add_argument("--quick", action="store_true", help="fewer samples and smaller networks")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "var" / "bench",
                        help="where <section>.json, latest.json and latest.png go (default: var/bench)")
    parser.add_argument("--sections-module", default="sections",
                        help="module name or .py file exposing SECTIONS (and HEADLINES); default: sections")
    parser.add_argument("--plot-only", action="store_true",
                        help="redraw latest.png from the result files in --out-dir and exit")
    parser.add_argument("--list", action="store_true", help="print the sections and their expected durations")
    return parser.parse_args(argv), parser


def main(argv: Sequence[str] | None = None) -> int:
    args, parser = parse_args(argv)
    try:
        module = load_sections_module(args.sections_module)
        all_sections = list(module.SECTIONS)
    except Exception as exc:
        text, _ = _error_line(exc)
        parser.error(f"--sections-module {args.sections_module}: {text}")
    headlines = list(getattr(module, "HEADLINES", ()))
    args.all_sections = all_sections
    if args.list:
        for s in all_sections:
            print(f"{s.name:<14} expected ~{_fmt_s(s.expected_full_s):>7} full, ~{_fmt_s(s.expected_quick_s):>6} quick")
        return 0
    if args.plot_only:
        plotted = draw(args.out_dir, all_sections, headlines)
        say(f"plot of {len(plotted)} headline figures → {args.out_dir / 'latest.png'}")
        return 0
    chosen = all_sections
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        known = {s.name for s in all_sections}
        unknown = [w for w in wanted if w not in known]
        if unknown or not wanted:
            parser.error(f"--only: unknown section(s) {', '.join(unknown) or '(none given)'}; "
                         f"known: {', '.join(s.name for s in all_sections)}")
        chosen = [s for s in all_sections if s.name in wanted]
    signal.signal(signal.SIGTERM, _on_sigterm)
    return run_sections(args, chosen, headlines)


if __name__ == "__main__":
    sys.exit(main())

"""Time the phases of `kiln demo` (install excluded): stack start, each task, the whole run,
stack stop, and Airflow's scheduling overhead: the part of the run's wall time in which no task was
running (the run's wall time minus the union of task run intervals; evaluate and optimize run in
parallel, so a plain sum of task times would exceed the wall time).

Targets on a 2-core machine: total <= 240 s, overhead <= 30 % of the run. Prints a table and
writes bench/results/demo_phases.json. Uses a temp KILN_HOME and free ports unless told otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common.processes import free_port
from infra.cli.app import DEFAULT_CONFIG, run_and_summarize, validated_config
from infra.cli.demo_data import write_digits_csv
from infra.stack.layout import StackPorts
from infra.stack.stack import Stack

TOTAL_TARGET_S = 240
OVERHEAD_TARGET_PCT = 30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", type=Path, default=None, help="KILN_HOME (default: a temp folder)")
    args = parser.parse_args()
    home = (args.home or Path(tempfile.mkdtemp(prefix="kiln-bench-"))).resolve()
    ports = StackPorts(**{name: free_port() for name in StackPorts.__dataclass_fields__})
    stack = Stack(home, ports)
    os.environ["KILN_HOME"] = str(home)
    phases: dict[str, float] = {}
    t_total = time.monotonic()
    t = time.monotonic()
    stack.up(report=lambda line: None)
    phases["stack start"] = time.monotonic() - t
    try:
        t = time.monotonic()
        write_digits_csv(home / "data" / "digits.csv")
        phases["write data"] = time.monotonic() - t
        t = time.monotonic()
        summary = run_and_summarize(stack, DEFAULT_CONFIG, {}, validated_config(DEFAULT_CONFIG, {}, home))
        phases["run (trigger to summary)"] = time.monotonic() - t
    finally:
        t = time.monotonic()
        stack.down(report=lambda line: None)
        phases["stack stop"] = time.monotonic() - t
    phases["total"] = time.monotonic() - t_total

    table = Table(title=f"kiln demo phases ({platform.machine()}, {os.cpu_count()} cores)")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    for name, seconds in phases.items():
        if name == "total":
            continue
        table.add_row(name, f"{seconds:.1f}")
        if name.startswith("run"):
            for task, task_s in summary["task_seconds"].items():
                table.add_row(f"  task {task}", f"{task_s:.1f}")
            table.add_row("  DAG run wall time", f"{summary['wall_seconds']:.1f}")
            table.add_row("  no task running (overhead)", f"{summary['scheduling_overhead_seconds']:.1f} "
                                                f"({summary['scheduling_overhead_percent']:.1f} %)")
    table.add_row("total", f"{phases['total']:.1f}")
    Console().print(table)
    ok_total = phases["total"] <= TOTAL_TARGET_S
    ok_overhead = summary["scheduling_overhead_percent"] <= OVERHEAD_TARGET_PCT
    print(f"state {summary['state']}, eval {summary.get('metrics')}")
    print(f"target total <= {TOTAL_TARGET_S} s: {'met' if ok_total else 'MISSED'}; "
          f"overhead <= {OVERHEAD_TARGET_PCT} %: {'met' if ok_overhead else 'MISSED'}")
    out = Path(__file__).parent / "results" / "demo_phases.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"phases": phases, "summary": summary}, indent=2))
    return 0 if summary["state"] == "success" else 1


if __name__ == "__main__":
    raise SystemExit(main())

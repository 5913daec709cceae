"""Deploy click → running for the tiny model, with the host's warm start and without it (issue 22).

    .venv/bin/python bench/deploy.py [--rounds 5] [--cold]

A temporary platform (bench/serving.py's ``main_with``: SQLite, an embedded Redis, one ``python -m jobs.worker``)
and the tiny GPT-2 built on the spot. Each round asks for a deploy the way the Deploy button does
(``deployments.request_deploy``), waits until the application is running, then stops it and waits until it is
stopped. Printed: each deploy's time, the median, and the phases the last one recorded. ``--cold`` starts the
worker with LLMAPP_WARM_START=0: every server starts a Python of its own that imports torch and transformers.
Results go to stdout; copy them to bench/RESULTS.md.
"""

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serving import BASE, deploy, main_with, stop, tiny_platform  # noqa: E402

from llmapp import queues  # noqa: E402
from llmapp.extensions import db  # noqa: E402
from llmapp.models import Application  # noqa: E402
from llmapp.runtime import logs  # noqa: E402


def run(app, work, rounds: int):
    user, model, _ = tiny_platform(work)
    row = Application(name="deploy-probe", model_id=model.id, created_by_id=user.id, config=dict(BASE))
    db.session.add(row)
    db.session.commit()
    up, down = [], []
    for _ in range(rounds):
        deploy(row, up)
        stop(row, down)
    warm = os.environ.get("LLMAPP_WARM_START", "1") != "0"
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; warm start {'on' if warm else 'off'}")
    print(f"deploy → running: {', '.join(f'{t:.2f}' for t in up)} s (median {statistics.median(up):.2f} s)")
    print(f"stop → stopped:   {', '.join(f'{t:.2f}' for t in down)} s (median {statistics.median(down):.2f} s)")
    phases = db.session.get(Application, row.id).deploy_phases
    lines = logs.tail(queues.connection(), row.id, 500)
    started = [line["message"] for line in lines if "server process" in line["message"]]
    print(f"last server: {started[-1] if started else '(not logged)'}")
    print("last deploy's phases: " + ", ".join(f"{p['name']} {p['seconds'] or 0:.2f} s" for p in phases))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="no warm start: each server imports torch itself")
    args = parser.parse_args()
    if args.cold:
        os.environ["LLMAPP_WARM_START"] = "0"  # the worker main_with starts inherits it
    main_with(lambda app, work: run(app, work, args.rounds))


if __name__ == "__main__":
    main()

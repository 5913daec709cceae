"""The RQ worker entry point: builds the app once, then works its queues inside an app context.

python -m jobs.worker [QUEUE ...]        (default queue: "default")
"""

import sys

from redis import Redis
from rq import Queue, Worker


def main(argv: list[str]) -> None:
    from app import create_app  # the project's entry point: same config as `python app.py`

    app = create_app()
    if not app.config.get("REDIS_URL"):
        raise SystemExit("REDIS_URL is not set and no embedded Redis is running (start `python app.py`).")
    connection = Redis.from_url(app.config["REDIS_URL"])
    queues = [Queue(name, connection=connection) for name in (argv or ["default"])]
    with app.app_context():
        Worker(queues, connection=connection).work(with_scheduler=True)


if __name__ == "__main__":
    main(sys.argv[1:])

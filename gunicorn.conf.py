"""gunicorn settings for the web app: `python app.py` passes them, and gunicorn reads this file by
itself when started in this folder. Nothing is imported here: gunicorn's master loads this file, and
the gevent workers must import the platform only after they patched the standard library.

A worker told to stop (SIGTERM) stops accepting and waits up to graceful_timeout for its open
requests; a live log stream never ends by itself, so each stopping worker ends its streams at once.
"""

# For ordinary requests (streams end at once): under app.py's STOP_S, so that the web server stops by
# itself before app.py would kill it.
graceful_timeout = 8


def post_worker_init(worker):
    """Requests gunicorn can't parse answered with problem documents, as the API's own errors are.
    Watch for this worker being told to stop (gunicorn's SIGTERM handler only clears worker.alive),
    then end its live log streams. A thread, a greenlet under the gevent worker: nothing runs inside
    the signal handler."""
    import threading
    import time

    from llmapp.api.problems import answer_unparsed_requests_with_problems
    from llmapp.services import live_logs

    answer_unparsed_requests_with_problems(worker)

    def watch():
        while worker.alive:
            time.sleep(0.2)
        live_logs.end_streams()

    threading.Thread(target=watch, name="stop-watch", daemon=True).start()

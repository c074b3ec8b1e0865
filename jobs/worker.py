"""The worker command: ``python -m jobs.worker`` (or ``flask worker``).

Equivalent to ``rq worker --url $REDIS_URL portal``, plus two things: the app is created
before forking, and jobs left "running" by a killed worker are swept on start-up.
"""
from __future__ import annotations

import logging

from rq import Worker

from jobs import runtime
from portal.background.services import job_queue, redis_connection, sweep_stale_jobs
from portal.extensions import db


def main(burst: bool = False) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    app = runtime.app()
    connection = redis_connection(app.config)
    with app.app_context():
        queue = job_queue(connection)
        swept = sweep_stale_jobs(db.session, queue, stale_after=app.config["JOB_STALE_SECONDS"])
        db.session.commit()
        if swept:
            logging.info("swept %d job(s) left running by a stopped worker", len(swept))
        db.session.remove()
    Worker([queue], connection=connection).work(burst=burst, with_scheduler=False)


if __name__ == "__main__":
    main()

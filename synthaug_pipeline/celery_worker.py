"""The Celery app a `synthaug worker` serves: dagster-celery's step task on the broker in $SYNTHAUG_CELERY_BROKER.

``celery -A synthaug_pipeline.celery_worker worker -Q dagster`` (what `synthaug worker` runs) executes the
steps of runs whose profile sets ``execution.executor=celery``. A worker needs what a step needs: this
package, the same profile files, the bucket's credentials (AWS_* variables) and access to the Dagster
instance the run names (its PostgreSQL); each step reports its events to that instance itself.
"""

from __future__ import annotations

import os

from dagster_celery.tasks import create_task

from synthaug_pipeline.defs.executors import CELERY_BROKER_ENV, celery_app, celery_backend_env

_broker = os.environ.get(CELERY_BROKER_ENV)
if not _broker:
    raise SystemExit(f"synthaug worker: set ${CELERY_BROKER_ENV} to the broker URL (e.g. redis://localhost:6379/0)")

app = celery_app(_broker, os.environ.get(celery_backend_env()) or _broker)
execute_plan = create_task(app)

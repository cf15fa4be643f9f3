"""The Celery binding: the app and its settings, queue and task names, the result
backend, task events, the thin Celery tasks and the code that publishes them."""

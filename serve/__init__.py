"""``pdsn serve``: the edge service over one ``Recognizer`` (and one ``Gallery``): face API, KServe v2, metrics.

``pdsn.serve.app.create_app(ServeConfig(...))`` builds the ASGI app. This package needs the
``serve`` extra (FastAPI, uvicorn, prometheus-client, python-multipart); nothing here is imported
until a server is built, so the ``pdsn`` command works without it.
"""

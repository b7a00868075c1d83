"""A local web page showing what the database knows: ``cyllama-db dashboard``.

Standard library only (``http.server``), no build step and nothing fetched
from the internet: the page is one HTML document plus a small script and
style sheet shipped inside the package (``cyllama_db/dashboard/static``); the script
asks this server for JSON and draws the charts as inline SVG.

Routes (all ``GET``):

==================  ============================================================
``/``               the page
``/static/<file>``  ``dashboard.js`` / ``dashboard.css``
``/api/summary``    everything the page shows, in one document
``/api/info``       path, size, schema version, row counts
``/api/metrics``    metrics history (``?minutes=N``, default: the retention window)
``/api/stats``      the statistics summary (``?since=7d``), ``by_model`` as a list
``/api/cache``      cache entries, size, limit and hit rate
``/api/models``     registered models (secrets always redacted)
``/api/series``     tok/s, p50/p95 latency and generations over time per model
                    (``?range=10m|1h|24h|7d``)
``/api/recent``     the latest generations and warnings/errors (``?limit=N``)
``/metrics``        Prometheus text exposition (see :mod:`cyllama_db.prometheus`)
==================  ============================================================

It listens on 127.0.0.1 by default. It has no authentication: serve it on
another address only on a network you trust. While bound to loopback it
answers only requests whose ``Host`` is a loopback name, which stops other
web sites from reading it through DNS rebinding.

``server.py`` holds the HTTP server and its routes, ``data.py`` what each
section reads from the database; both format values with
:mod:`cyllama_db.cli.format`.

Use it from Python::

    server = make_server(db, port=0)          # 0: any free port
    print(server.url)
    server.serve_forever()
"""

from __future__ import annotations

from .data import dashboard_data
from .server import DashboardServer, is_loopback, make_server

__all__ = ["DashboardServer", "dashboard_data", "is_loopback", "make_server"]

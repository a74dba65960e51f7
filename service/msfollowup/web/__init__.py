"""The web application: pages, the REST API under /api/v1, /metrics and /healthz on one listener.

An adapter: routes call the use cases in msfollowup.app (and the read functions of the concern
modules), never tables. See server.py for how it runs inside `msfollowup serve`.
"""

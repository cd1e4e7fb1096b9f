"""edge-review: the back office of the unknown-object loop (the ``[review]`` extra).

collector (MQTT shared subscription, manual acks; feedback through edge-run's durable outbox), intake (what a
message must be), store + schema (SQLAlchemy Core: SQLite by default, PostgreSQL), crops (files named by sha256,
quota), grouping (the bundle's model embeds every crop; look-alikes join a group), labels (actions, undo), web
(Flask page, templates/), metrics (Prometheus), export (catalogue delta + history for edge-build), service (serve
wiring, stats). Imports run/, head/, backends/, preprocess and bundle; never builder/ or demo/.
"""

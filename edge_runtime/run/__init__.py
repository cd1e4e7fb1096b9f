"""edge-run, the on-device loop: one process per camera, from frames to MQTT messages and metrics.

Rooms: ``pipeline`` (``run()``: wiring only, reads top to bottom), ``startup`` (bundle, identity, backend,
source, metrics and publisher opened and checked), ``queues`` (bounded queues between the threads), ``stages``
(capture, preprocess, inference and publish loops), ``sources/`` (cameras, streams, files: base, files, live,
uri), ``sampler`` (motion-adaptive frame rate), ``regions`` (full frame, fixed boxes, detector), ``messages``
(every MQTT schema and payload), ``feedback`` (reviewer feedback: validation, attribution, counting),
``heartbeat`` (the main thread's periodic work), ``publisher`` (the Publisher protocol and the null publisher),
``outbox/`` (durable SQLite queue: store, database, policy), ``mqtt`` (the MQTT publisher), ``mqtt_session``
(its paho callbacks and acks), ``mqtt_sender`` (its sender thread), ``mqtt_inflight`` (its ledger of messages
awaiting PUBACK: mids, early acks, resend cost), ``uplink`` (its byte-rate cap),
``mqtt_auth`` (TLS, credentials, fatal refusals), ``metrics`` (Prometheus), ``health`` (systemd notify and
watchdog), ``footprint_probe`` (edge-build's measured child process), ``scene/`` (what the profile's ``[scene]``
makes of the head's decisions: cart tracks, events and contents, shelf slots; stage, messages, proposals,
tracker, evidence, cart, shelf).

Nothing here imports the builder or the demo generator; the CLI hands ``run()`` a demo video when a developer
camera has no source.
"""

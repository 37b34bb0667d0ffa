"""`epp --workers N`: ext_proc streams served by N worker processes, decisions made in one.

See docs/workers.md. The decision process (the EPP's main process) owns everything a pick
reads and writes: the datastore and its scraped metrics, in-flight counts, the prefix index,
the prefill gate's held requests, objectives, rewrites, metrics, health and leader election.
Worker processes own only streams: the gRPC transport, the protocol state machine and the
response relay (per-token work). A worker asks the decision process once per request to
route it and tells it two things afterwards, the first response byte and the end.
"""

"""Kubernetes mode: InferencePool, Pods, InferenceObjectives and InferenceModelRewrites from the API server.

Network I/O runs in background threads (the `kubernetes` client is synchronous); everything that
touches the datastore or the policy stores is handed to the event loop with
`call_soon_threadsafe`, because the hot path reads those without locks.
"""

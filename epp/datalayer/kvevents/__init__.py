"""Model servers' KV-cache events (vLLM / SGLang over ZMQ): the cold path that feeds the precise
prefix index. decode -> sequence -> index, driven by the ingester thread."""

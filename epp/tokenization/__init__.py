"""The tokens a request will be prefilled with, for the precise prefix index.

Two sources, chosen by `token-producer`'s parameters: the model server itself (vLLM's
/tokenize or render endpoints, remote.py) or a local Hugging Face tokenizer with the model's
chat template (local.py). Both are cached (cache.py) so a repeated prompt, or with the local
tokenizer a repeated system prompt, is not tokenized again.
"""

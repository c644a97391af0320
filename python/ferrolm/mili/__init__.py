"""The MILI design's Python names, as thin views over ferrolm's Rust core.

Code written against MILI's ``python_layer`` runs on ferrolm with only its
import lines changed: every name below is the core's own object (config,
weights, page pool, prefix cache, scheduler, sampler, tokenizer, model) seen
through MILI's signatures.
"""

"""Vision units: image excerpts, recording vision subjects, explaining and scoring them.

A vision unit's excerpts are pictures (`schema.ImageRef` on an `ActivationRecord` with one
position, the whole image), stored content-addressed in the run directory (`store`).
Everything after recording — splits, the engine, explanations, scores, compare, publish —
is the text pipeline's, with image-aware explainers and scorers registered beside the
text ones.
"""

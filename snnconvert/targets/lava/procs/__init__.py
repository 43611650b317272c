"""Lava Processes and ProcessModels of the snnconvert Lava target (and nothing else).

Lava's compiler executes every module in this folder when it looks for models, so it must
hold only side-effect-free Process/ProcessModel definitions with absolute imports.
"""

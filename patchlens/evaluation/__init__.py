"""Evaluator code shared by the tasks (:mod:`patchlens.tasks`) and the analyses
(:mod:`patchlens.analysis`): cosine k-NN and DINO's vote (:mod:`.knn`), ranking and segmentation
metrics (:mod:`.metrics`), DAVIS J&F (:mod:`.davis_metrics`), grid <-> pixel resizing
(:mod:`.upsample`), the linear probe (:mod:`.probes`), support sampling (:mod:`.support`) and
mask-weighted pooling of patch tokens (:mod:`.pooling`). Protocols: ``docs/protocols.md``.

Tasks and analyses import from here, never from one another; nothing here imports a task.
"""

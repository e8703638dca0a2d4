"""Training: one loop for every stage, what-trains selection, the anchor guarantee.

Heavy imports (torch, accelerate) happen in the submodules; import what you need from
``barkit.train.loop``, ``barkit.train.objectives``, ``barkit.train.freeze``,
``barkit.train.config`` and ``barkit.train.data``.
"""

"""Training: one loop for every stage, one driver, what-trains selection, the anchor guarantee.

Heavy imports (torch, accelerate) happen in the submodules. ``kinds`` is the registry of stage
kinds (defaults, objectives, per-preset numbers); ``inputs`` the input kinds a stage starts from;
``stages`` the one driver (resolve a stage once, run it on any input); ``loop`` the training
loop; ``freeze`` what trains; ``config`` the validated stage configs and their typed overrides;
``stage_data``, ``objectives``, ``data`` and ``grpo`` the data and losses.
"""

"""barkit: modular post-training of language models (Branch-Adapt-Route and friends).

Importing the package is cheap on purpose: heavy libraries (torch, transformers) are
imported by the modules that need them, so ``barkit --help`` answers at once.
"""

__version__ = "0.1.0"

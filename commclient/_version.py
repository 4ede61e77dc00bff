"""The version of commclient: the one source the distribution's metadata is built from.

Kept as a plain constant so that ``import commclient`` never imports ``importlib.metadata``
(about a third of the cost of importing httpx).
"""

__version__ = "0.1.0"

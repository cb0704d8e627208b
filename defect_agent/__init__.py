"""Cross-cutting core of defect-agent: configuration, paths and the offline runtime.

Kept free of heavy imports so every layer (vision, retrieval, knowledge_base, agent) can depend on it.
"""

__version__ = "0.1.0"

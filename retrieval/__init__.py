"""Retrieval of similar past cases: FAISS index management (index, policy, store), hybrid ranking for text, and the
Retriever facade the agent uses. Heavy imports (faiss) happen inside the functions that need them."""

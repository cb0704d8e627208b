"""Vector search for the knowledge base: FAISS index management (`index`, the size `policy`, the on-disk `store`
replaced atomically), hybrid vector + keyword `ranking` for text queries, the `Embeds` protocol an embedder meets
and the `SimilarCase` hit model. It knows nothing of cases: `knowledge_base` owns the rows and derives the index
through this package. Heavy imports (faiss) happen inside the functions that need them."""

"""The embeddings service: collections of documents with pgvector indexes and semantic search."""

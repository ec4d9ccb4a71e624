"""Duplicate pairs from embeddings and hashes: exact and faiss search (matching), the partitioned search for large stores, and connected components."""

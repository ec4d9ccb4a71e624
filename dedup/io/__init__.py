"""Files: input shards (local or fsspec), tar byte spans, image decoding, the embeddings store, the run folder's tables, and atomic writes."""

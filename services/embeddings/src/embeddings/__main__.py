"""`python -m embeddings`: serve the embeddings service."""

from common.serve import serve
from embeddings.settings import EmbeddingsSettings

if __name__ == "__main__":
    serve("embeddings.main:create_app", EmbeddingsSettings())

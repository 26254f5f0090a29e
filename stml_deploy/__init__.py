"""stml's edge runtime: model packages, preprocessing, embedders, gallery index, Hub.

Never imports torch (a Jetson may not have it); heavy runtimes load inside the functions
that need them.

    from stml_deploy import Embedder, Index
    embedder = Embedder.from_pretrained("org/name")          # or Embedder.from_package("dir")
    index = Index.load("gallery.idx")
    for hits in index.search_images(embedder, ["q.jpg"], k=5):   # one list per query image
        print([(h["path"], h["score"]) for h in hits])
"""

from stml_deploy.embedder import Embedder, Embeddings
from stml_deploy.errors import MissingDependencyError, StmlError
from stml_deploy.index import GalleryIndex
from stml_deploy.package import ModelPackage
from stml_deploy.preprocess import PreprocessSpec

Index = GalleryIndex  # the short name of the public API

__all__ = [
    "Embedder",
    "Embeddings",
    "GalleryIndex",
    "Index",
    "MissingDependencyError",
    "ModelPackage",
    "PreprocessSpec",
    "StmlError",
]

"""stml's edge runtime: model packages, preprocessing, embedders, gallery index, Hub.

Never imports torch (a Jetson may not have it); heavy runtimes load inside the functions
that need them."""

from stml_deploy.errors import MissingDependencyError, StmlError
from stml_deploy.package import ModelPackage
from stml_deploy.preprocess import PreprocessSpec

__all__ = ["MissingDependencyError", "ModelPackage", "PreprocessSpec", "StmlError"]

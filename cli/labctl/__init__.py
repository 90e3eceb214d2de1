"""labctl: hands-on Kubernetes labs for microservices architecture."""

__version__ = "0.1.0"

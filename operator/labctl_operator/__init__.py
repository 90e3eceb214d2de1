"""The labctl operator: keeps each Microservice's Deployment and Service in the shape its spec describes.

    python -m labctl_operator --help       # in a container (in-cluster credentials)
    labctl operator run                    # on a labctl cluster, from a checkout or an installed labctl
"""

__version__ = "0.1.0"

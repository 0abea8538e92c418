"""triggerd: the OpenShift Build API on any machine.

Webhooks, registry notifications and manual requests become Build objects from stored
BuildConfigs; run policies decide what starts; buildah builds and pushes the images.
"""

__version__ = "0.1.0"

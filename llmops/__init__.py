"""llmops: the CLI and the root config. Importing it prepares Ray's environment (see
``services.local_ray``) before anything imports ``ray``."""

from services.local_ray import prepare_environment

prepare_environment()

#!/bin/sh
# Container entrypoint. SageMaker starts the container as `docker run IMAGE serve`; `serve`
# runs this package's server, which reads the model from $SAGEMAKER_BASE_DIR/model
# (/opt/ml/model) and honours SAGEMAKER_BIND_TO_PORT and the other SAGEMAKER_* variables.
# Arguments after `serve` go to `kogpt2-serving serve`; any other command runs as given
# (e.g. `docker run -it IMAGE bash`).
set -e
if [ "${1:-}" = "serve" ]; then
    shift
    # Listen on all interfaces (the port is published or SageMaker connects from outside) and
    # install code/requirements.txt as SageMaker's own containers do; later flags override.
    exec kogpt2-serving serve --host 0.0.0.0 --install-requirements "$@"
fi
exec "$@"

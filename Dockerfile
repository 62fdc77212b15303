# A custom Beam SDK container with this project installed, for Flink (--environment_type=DOCKER)
# and Dataflow (--sdk_container_image). The base image must match the Beam version we pin.
FROM apache/beam_python3.11_sdk:2.77.0

WORKDIR /opt/lambda-learner-beam
COPY setup.py README.md ./
COPY lambda_core ./lambda_core
COPY transforms ./transforms
COPY pipeline ./pipeline
# The base image already has apache-beam 2.77.0; this adds numpy/scipy/fastavro and our packages.
RUN pip install --no-cache-dir . \
    && python -c "import lambda_core, transforms, pipeline; print('lambda-learner-beam installed')"

# Per-entity problems are tiny: BLAS threads only contend with the SDK harness threads.
ENV OPENBLAS_NUM_THREADS=1

# Keep the SDK harness entrypoint of the base image.
ENTRYPOINT ["/opt/apache/beam/boot"]

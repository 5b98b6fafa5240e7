# The MLflow tracking server image (infra/mlflow/mlflow-server.yaml): MLflow at the version the jobs log
# with and its basic-auth app (the [auth] extra: Flask-WTF), boto3 for S3 artifacts, psycopg2 for the
# PostgreSQL backend store. Nothing of Loopfree is in it.
# Versions: MLflow and boto3 as pinned in pyproject.toml (tests/infra/test_images.py checks them).
FROM python:3.11.14-slim-bookworm

ARG MLFLOW_VERSION=3.17.2
ARG BOTO3_VERSION=1.44.8
ARG PSYCOPG2_VERSION=2.9.13

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY infra/docker/constraints.txt /tmp/constraints.txt
RUN pip install -c /tmp/constraints.txt "mlflow[auth]==${MLFLOW_VERSION}" "boto3==${BOTO3_VERSION}" \
        "psycopg2-binary==${PSYCOPG2_VERSION}" \
    && useradd --uid 1000 --create-home mlflow

USER 1000
WORKDIR /home/mlflow
EXPOSE 5000
# Backend store, artifact destination and host come from the environment of the Deployment
# (MLFLOW_BACKEND_STORE_URI, MLFLOW_ARTIFACTS_DESTINATION): the database password never appears in argv.
ENTRYPOINT ["mlflow", "server"]

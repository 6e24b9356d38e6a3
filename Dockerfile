# The abrouter gateway image. The example `churn` experiment's control is a model server on
# 127.0.0.1:9001, which the image does not run: mount your own configs (`--config /configs`) or
# use `churn-local`, whose variants are both in-process.
#   docker build -t abrouter .
#   docker run -p 8000:8000 -e ABROUTER_REDIS_URL=redis://redis:6379/0 abrouter
# Without ABROUTER_REDIS_URL the container runs its own embedded Redis under /data (mount a volume there).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY router ./router
RUN pip install --no-cache-dir build && python -m build --wheel --outdir /wheels

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 abrouter
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# Example experiments and model definitions, so the image can serve the quick-start examples.
COPY config ./config
COPY variants ./variants
# /data must exist and belong to the user before VOLUME, or Docker creates it root-owned and the
# embedded Redis and the admin token file cannot be written there.
RUN python -m variants.train --out variants/models && mkdir -p /data && chown -R abrouter /app /data
USER abrouter
ENV ABROUTER_HOST=0.0.0.0 \
    ABROUTER_PORT=8000 \
    ABROUTER_DATA_DIR=/data \
    ABROUTER_MODELS_DIR=/app
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
ENTRYPOINT ["abrouter", "serve"]
CMD ["--config", "config"]

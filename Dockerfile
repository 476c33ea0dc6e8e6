# One image for the API, the workers, beat, Flower and the migration job.
# Build with a CUDA-enabled torch for GPU workers (default), or pass --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
FROM python:3.11-slim AS base
ARG TORCH_INDEX=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    WITHSENSE_HOME=/data HF_HOME=/models/hf
RUN useradd --create-home --uid 10001 withsense && mkdir -p /data /models && chown withsense /data /models
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api ./api
COPY core ./core
COPY db ./db
COPY workers ./workers
COPY cli ./cli
COPY evaluation ./evaluation
COPY migrations ./migrations
COPY services ./services
RUN if [ -n "$TORCH_INDEX" ]; then pip install torch --index-url "$TORCH_INDEX"; fi \
 && pip install ".[onnx]"
USER withsense
EXPOSE 8000 5555
CMD ["uvicorn", "api.app:app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]

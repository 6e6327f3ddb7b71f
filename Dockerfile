FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY adapter ./adapter
RUN pip install --no-cache-dir .
COPY mappings ./mappings
ENV ADAPTER_HOST=0.0.0.0 \
    ADAPTER_MAPPINGS_DIR=/app/mappings
EXPOSE 8080
CMD ["infusion-adapter", "serve"]

# The agentstream application image: one image for the API and every worker kind.
#   docker build -t agentstream:local .
#   docker run --rm agentstream:local --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY agentstream ./agentstream
RUN pip install . \
 && useradd --create-home --uid 10001 agentstream

USER agentstream
EXPOSE 8080
ENTRYPOINT ["agentstream"]
CMD ["up"]
